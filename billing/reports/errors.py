"""Errors of the reports (the fleet yield report and the finance overview)."""

from __future__ import annotations


class ReportError(Exception):
    """Bad input or facts a report cannot be built from; one line that says what to do."""
