"""Named errors of invoicing: one line each, naming the invoice or period."""

from __future__ import annotations

from billing.ledger.errors import ImmutableInvoice, LedgerError


class InvoicingError(LedgerError):
    """An invoicing request that cannot be done as asked."""


__all__ = ["ImmutableInvoice", "InvoicingError"]
