"""Named errors of the usage adapter."""

from __future__ import annotations

from billing.common.errors import BillingError


class UsageDataError(BillingError, RuntimeError):
    """The usage folder is missing, or a file in it cannot be read."""
