"""Errors of the reconciliation: bad input is one line and exit status 2."""

from __future__ import annotations

from billing.common.errors import BillingError


class ReconcileError(BillingError):
    """Bad input (a period that does not parse, no usage directory): one line, exit 2."""
