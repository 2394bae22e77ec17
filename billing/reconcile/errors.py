"""Errors of the reconciliation: bad input is one line and exit status 2."""

from __future__ import annotations


class ReconcileError(Exception):
    """Bad input (a period that does not parse, no usage directory): one line, exit 2."""
