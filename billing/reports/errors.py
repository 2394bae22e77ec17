"""Errors of the reports (the fleet yield report and the finance overview)."""

from __future__ import annotations

from billing.common.errors import BillingError


class ReportError(BillingError):
    """Bad input or facts a report cannot be built from; one line that says what to do."""
