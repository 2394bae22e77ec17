"""Errors of the read model."""

from __future__ import annotations

from billing.common.errors import BillingError


class NotFound(BillingError):
    """Nothing this reader may see by that name: 404 (also for another tenant's object)."""
