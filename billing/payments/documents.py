"""What wattmeter sends to Stripe for an issued invoice: pure, no I/O.

Each Stripe object carries wattmeter's ids in its metadata (so a retry finds it by them, even
after Stripe's 24-hour idempotency window) and each creating call has a deterministic
idempotency key built from the invoice number and its content hash (so a replay within the
window returns the first response, and a voided and re-issued invoice never reuses a key).
Amounts are integer minor units of the invoice currency (Stripe's convention); a line of 0 is
sent too, so Stripe's invoice has the same lines as wattmeter's.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing.pricing.lines import InvoiceLine
from billing.pricing.money import to_minor

META_TENANT = "wattmeter_tenant_id"
META_INVOICE = "wattmeter_invoice_id"
META_NUMBER = "wattmeter_invoice_number"
META_POSITION = "wattmeter_line_position"
META_KIND = "wattmeter_line_kind"
META_HASH = "wattmeter_content_hash"
META_PERIOD = "wattmeter_period"
META_CREDIT_NOTE = "wattmeter_credit_note_number"
KEY_PREFIX = "wattmeter"
DAYS_UNTIL_DUE = 30
# Stripe Billing meters, for tenants in "meters" mode: one event name per measure, exact integers
METER_EVENTS = {"ms": "wattmeter_gpu_ms", "mJ": "wattmeter_energy_mj"}


@dataclass(frozen=True)
class InvoiceDoc:
    invoice_id: int
    number: str
    tenant_id: str
    period: str
    currency: str
    content_hash: str
    amount_due: Decimal
    lines: tuple[InvoiceLine, ...]


def _stem(doc: InvoiceDoc) -> str:
    return f"{KEY_PREFIX}-{doc.number}-{doc.content_hash[:16]}"


def customer_key(tenant_id: str) -> str:
    return f"{KEY_PREFIX}-customer-{tenant_id}"


def customer_params(tenant_id: str, name: str, email: str | None) -> dict[str, object]:
    params: dict[str, object] = {"name": name, "metadata": {META_TENANT: tenant_id}}
    if email:
        params["email"] = email
    return params


def invoice_metadata(doc: InvoiceDoc) -> dict[str, str]:
    return {
        META_TENANT: doc.tenant_id,
        META_INVOICE: str(doc.invoice_id),
        META_NUMBER: doc.number,
        META_PERIOD: doc.period,
        META_HASH: doc.content_hash,
    }


def item_key(doc: InvoiceDoc, line: InvoiceLine) -> str:
    return f"{_stem(doc)}-item-{line.position}"


def item_params(
    doc: InvoiceDoc, line: InvoiceLine, customer_id: str, stripe_invoice_id: str | None = None
) -> dict[str, object]:
    params: dict[str, object] = {
        "customer": customer_id,
        "amount": to_minor(line.amount, doc.currency),
        "currency": doc.currency.lower(),
        "description": line.description[:500],
        "period": {
            "start": line.service_start_ms // 1000,
            "end": max(line.service_start_ms, line.service_end_ms - 1) // 1000,
        },
        "metadata": {
            META_INVOICE: str(doc.invoice_id),
            META_NUMBER: doc.number,
            META_POSITION: str(line.position),
            META_KIND: line.kind,
        },
    }
    if stripe_invoice_id is not None:
        params["invoice"] = stripe_invoice_id
    return params


def invoice_key(doc: InvoiceDoc) -> str:
    return f"{_stem(doc)}-invoice"


def invoice_params(doc: InvoiceDoc, customer_id: str) -> dict[str, object]:
    return {
        "customer": customer_id,
        "collection_method": "send_invoice",
        "days_until_due": DAYS_UNTIL_DUE,
        "auto_advance": False,
        "pending_invoice_items_behavior": "include",
        "description": f"wattmeter invoice {doc.number} for {doc.period}",
        "metadata": invoice_metadata(doc),
    }


def finalize_key(doc: InvoiceDoc) -> str:
    return f"{_stem(doc)}-finalize"


def void_key(doc: InvoiceDoc) -> str:
    return f"{_stem(doc)}-void"


def credit_note_key(number: str) -> str:
    return f"{KEY_PREFIX}-{number}-credit-note"


def credit_note_params(
    number: str, invoice_number: str, stripe_invoice_id: str, amount: Decimal, currency: str, reason: str, paid: bool
) -> dict[str, object]:
    minor = to_minor(amount, currency)
    params: dict[str, object] = {
        "invoice": stripe_invoice_id,
        "lines": [
            {
                "type": "custom_line_item",
                "description": f"{number}: {reason}"[:500],
                "quantity": 1,
                "unit_amount": minor,
            }
        ],
        "memo": f"wattmeter credit note {number} for {invoice_number}",
        "metadata": {META_CREDIT_NOTE: number, META_NUMBER: invoice_number},
    }
    if paid:  # a paid invoice's credit goes to the customer's balance (Stripe needs it said)
        params["credit_amount"] = minor
    return params


def meter_events(doc: InvoiceDoc, customer_id: str, now_s: int) -> list[tuple[int, dict[str, object]]]:
    """Meters mode: one Stripe Billing meter event per usage line, in exact integer units (ms, mJ),
    stamped inside Stripe's accepted window (the last 35 days) and deduplicated by `identifier`."""
    events = []
    oldest = now_s - 34 * 86_400
    for line in doc.lines:
        name = METER_EVENTS.get(line.base_unit)
        if name is None or line.quantity_base <= 0:
            continue
        stamp = min(max(line.service_end_ms // 1000 - 1, oldest), now_s)
        events.append(
            (
                line.position,
                {
                    "event_name": name,
                    "identifier": f"{_stem(doc)}-meter-{line.position}",
                    "timestamp": stamp,
                    "payload": {"stripe_customer_id": customer_id, "value": str(line.quantity_base)},
                },
            )
        )
    return events
