"""Payment state back from Stripe: events from the webhook (signature verified) or from a poll of
the events list, each applied once.

An event is recorded in `stripe_events` under its id in the same transaction that applies it, so
the same event delivered twice, or delivered and then polled, changes nothing more. Payment
states: open -> paid | failed | void | uncollectible. A final state (paid, void, uncollectible)
is not undone by an older or a non-final event (a `payment_failed` after `paid`, events out of
order); among final states the later event wins (uncollectible, then paid after all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from billing.ledger.db import Ledger, audit, now_ms
from billing.ledger.models import Invoice, StripeEvent, StripeInvoiceSync, SyncCursor
from billing.payments import documents as docs
from billing.payments.client import Stripe
from billing.payments.errors import PaymentsError
from billing.pricing.money import from_minor

# Stripe event type -> the payment state it means
INVOICE_EVENTS = {
    "invoice.finalized": "open",
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.payment_failed": "failed",
    "invoice.voided": "void",
    "invoice.marked_uncollectible": "uncollectible",
}
FINAL_STATES = frozenset({"paid", "void", "uncollectible"})
POLL_CURSOR = "stripe.events"


class BadSignature(PaymentsError):
    """A webhook whose Stripe-Signature does not verify with the endpoint's secret."""


@dataclass(frozen=True)
class Applied:
    event_id: str
    type: str
    outcome: str  # "paid WM-000001", "duplicate", "ignored: ..."


def verify(payload: bytes, signature: str | None, secret: str) -> Any:
    """The event, if `signature` (the Stripe-Signature header) verifies over the raw payload."""
    if not signature:
        raise BadSignature("no Stripe-Signature header")
    try:
        return stripe.Webhook.construct_event(payload, signature, secret)
    except stripe.SignatureVerificationError as exc:
        raise BadSignature(f"bad signature: {str(exc).splitlines()[0]}") from None
    except ValueError:
        raise BadSignature("payload is not a Stripe event (not JSON)") from None


def _next_state(current: str | None, current_at: int | None, new: str, new_at: int) -> bool:
    """Whether an event saying `new` (at `new_at`) replaces the state `current` (set at `current_at`)."""
    if current is None or current_at is None:
        return True
    if current in FINAL_STATES and new not in FINAL_STATES:
        return False
    return new_at >= current_at


def apply_event(ledger: Ledger, event: Any, source: str, actor: str = "stripe") -> Applied:
    """Apply one Stripe event (a verified webhook or a polled event), exactly once."""
    if hasattr(event, "to_dict"):
        event = event.to_dict()
    event_id, kind, created = str(event["id"]), str(event["type"]), int(event["created"])
    obj = event["data"]["object"]
    stripe_invoice_id = obj.get("id") if kind.startswith("invoice.") else None
    try:
        with ledger.transaction() as session:
            if session.get(StripeEvent, event_id) is not None:
                return Applied(event_id, kind, "duplicate")
            outcome = "ignored: not an invoice payment event"
            state = INVOICE_EVENTS.get(kind)
            if state is not None:
                row = session.scalar(
                    select(StripeInvoiceSync)
                    .where(StripeInvoiceSync.stripe_invoice_id == stripe_invoice_id)
                    .with_for_update()
                )
                if row is None:
                    meta = dict(obj.get("metadata") or {})
                    wanted = meta.get(docs.META_INVOICE)
                    row = session.get(StripeInvoiceSync, int(wanted)) if wanted and wanted.isdigit() else None
                if row is None:
                    outcome = "ignored: not a wattmeter invoice"
                elif _next_state(row.payment_status, row.status_event_created, state, created):
                    row.payment_status, row.status_event_created = state, created
                    currency = str(obj.get("currency") or "usd").upper()
                    if obj.get("amount_paid") is not None:
                        row.amount_paid = from_minor(int(obj["amount_paid"]), currency)
                    row.updated_ms = now_ms()
                    number = session.scalar(select(Invoice.number).where(Invoice.id == row.invoice_id))
                    outcome = f"{state} {number}"
                    audit(
                        session, actor, f"stripe.{state}", "invoice", str(row.invoice_id), event=event_id, source=source
                    )
                else:
                    outcome = f"ignored: {row.payment_status} stays (event older or not final)"
            session.add(
                StripeEvent(
                    event_id=event_id,
                    type=kind,
                    created=created,
                    stripe_invoice_id=stripe_invoice_id,
                    source=source,
                    outcome=outcome[:64],
                    received_ms=now_ms(),
                )
            )
            return Applied(event_id, kind, outcome)
    except IntegrityError:  # the same event applied by another process a moment ago
        return Applied(event_id, kind, "duplicate")


def poll(ledger: Ledger, client: Stripe) -> list[Applied]:
    """Apply every invoice event since the last poll (the fallback for lost webhooks), oldest first."""
    with ledger.transaction() as session:
        cursor = session.get(SyncCursor, POLL_CURSOR)
        since = cursor.value if cursor else 0
    # no `types` filter: not every Stripe peer has it; other event types are left out just below
    params: dict[str, Any] = {}
    if since:
        params["created"] = {"gte": since}  # events of the same second come again; their ids make them no-ops
    events = client.list_all("list events", client.client.v1.events, params)
    plain = sorted((e.to_dict() for e in events if e.type in INVOICE_EVENTS), key=lambda e: (e["created"], e["id"]))
    applied = [apply_event(ledger, event, "poll") for event in plain]
    newest = max((int(e["created"]) for e in plain), default=since)
    with ledger.transaction() as session:
        cursor = session.get(SyncCursor, POLL_CURSOR)
        if cursor is None:
            session.add(SyncCursor(name=POLL_CURSOR, value=newest, updated_ms=now_ms()))
        elif newest > cursor.value:
            cursor.value, cursor.updated_ms = newest, now_ms()
    return applied
