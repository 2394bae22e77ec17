"""The root of every error a user of billing can meet.

Each package's `errors.py` subclasses `BillingError`, so the CLI maps the whole family to exit 2
in one place (`billing.common.cli_runner`) and the HTTP API to a 4xx in one place. An error names
what it is about in `subject` (a field such as "period" or "rate_card", or an object such as
"invoice"), so an adapter never has to guess from the message text.
"""

from __future__ import annotations


class BillingError(Exception):
    """A billing request that cannot be done as asked; `str(error)` is one line a person can act on."""

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


class PeriodError(BillingError, ValueError):
    """A month that does not parse, or that reaches outside the instants wattmeter holds."""

    def __init__(self, message: str, *, subject: str | None = "period") -> None:
        super().__init__(message, subject=subject)
