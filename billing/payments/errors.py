"""Errors of the Stripe adapter: each is one line a person can act on."""

from __future__ import annotations

from billing.common.errors import BillingError


class PaymentsError(BillingError):
    """A Stripe sync or events problem that stops a command (exit 2)."""


class StripeConfigError(PaymentsError):
    """Stripe is not configured (no API key, a bad base URL, no webhook secret)."""


class StripeCallFailed(PaymentsError):
    """A Stripe call failed after its retries; the message names the call and the cause."""
