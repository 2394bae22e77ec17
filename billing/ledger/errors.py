"""Named errors of the ledger: each message is one line a person can act on."""

from __future__ import annotations

from billing.common.errors import BillingError


class LedgerError(BillingError, RuntimeError):
    """A ledger operation that cannot be done as asked."""


class NotFound(LedgerError):
    """An unknown tenant, rate card, invoice, ..."""


class Conflict(LedgerError):
    """The request contradicts what the ledger holds (an overlapping lease, a duplicate id)."""


class ImmutableInvoice(LedgerError):
    """An attempt to change an invoice after it was finalized."""


class DatabaseUnavailable(LedgerError):
    """The billing database cannot be reached or migrated."""


class InvalidTenant(LedgerError):
    """A tenant id, name or time zone that breaks the rules of billing.ledger.tenant_rules."""
