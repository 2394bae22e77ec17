"""Named errors of the valley market (preemption, maintenance, webhooks): one line each. The
offers' own errors are the leases domain's (billing.leases.errors), where offers live."""

from __future__ import annotations

from billing.ledger.errors import Conflict, LedgerError


class MarketError(LedgerError):
    """A market operation that cannot be done as asked."""


class InvalidWindow(MarketError):
    """A maintenance window that cannot be: no GPUs, an empty window, or announced after it began."""


class CannotPreempt(Conflict, MarketError):
    """Nothing to preempt, or a preemption instant before the lease's start or after its end."""


class DeliveryError(MarketError):
    """A webhook endpoint that cannot be set (a bad URL) or an event that cannot be sent."""
