"""Push issued invoices, voids and credit notes to Stripe, each step recorded, nothing twice.

An issued invoice becomes customer -> invoice items -> invoice -> finalize (or, for a tenant in
"meters" mode, customer -> one Stripe Billing meter event per usage line). Before each object is
created it is looked for: first by the Stripe id wattmeter recorded, then by wattmeter's ids in
Stripe's metadata (list + match), and only then created, with a deterministic idempotency key
(`billing.payments.documents`). The Stripe ids are committed to `stripe_invoice_syncs` as they
come (the customer, the items together, the invoice, its finalization), so a crash between any
two calls loses at most the record of a few, and the metadata lookup finds those objects again
on the next attempt, today or days later. The first attempt of an invoice skips the lookups
(nothing of it can be in Stripe yet) unless another push for the same tenant was left unfinished.

A voided wattmeter invoice is voided in Stripe (an open invoice) or its pending items are
deleted (pushed partly, never invoiced), so they cannot slip into the tenant's next invoice.
A credit note becomes a Stripe credit note on the Stripe invoice it corrects.

Failures (network, 409, 429, 5xx) are retried with backoff in `billing.payments.client`; what
still fails is recorded with its cause on the invoice's sync row, and the push goes on with the
next invoice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.common.periods import parse_period
from billing.ledger.db import Ledger, audit, now_ms
from billing.ledger.lines import line_from_row
from billing.ledger.models import (
    INVOICE_FINALIZED,
    INVOICE_VOID,
    CreditNote,
    Invoice,
    StripeCreditNoteSync,
    StripeInvoiceSync,
    Tenant,
)
from billing.payments import documents as docs
from billing.payments.client import Stripe
from billing.payments.errors import PaymentsError, StripeCallFailed

STATE_PENDING = "pending"
STATE_CUSTOMER = "customer"
STATE_ITEMS = "items"
STATE_INVOICE = "invoice"
STATE_FINALIZED = "finalized"
STATE_REPORTED = "reported"  # meters mode: every usage line sent as a meter event
STATE_VOIDED = "voided"
DONE_STATES = frozenset({STATE_FINALIZED, STATE_REPORTED})
Progress = Callable[[str], None]


@dataclass
class PushOutcome:
    document: str  # invoice or credit note number
    tenant_id: str
    action: str  # pushed | already pushed | voided | reported | credit note | failed
    stripe_id: str | None = None
    error: str | None = None


@dataclass
class PushReport:
    outcomes: list[PushOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[PushOutcome]:
        return [o for o in self.outcomes if o.action == "failed"]


def invoice_doc(invoice: Invoice) -> docs.InvoiceDoc:
    assert invoice.number is not None, "only issued invoices go to Stripe"
    lines = tuple(line_from_row(line) for line in sorted(invoice.lines, key=lambda line: line.position))
    return docs.InvoiceDoc(
        invoice.id,
        invoice.number,
        invoice.tenant_id,
        invoice.period,
        invoice.currency,
        invoice.content_hash,
        invoice.amount_due,
        lines,
    )


def _as_dict(obj: Any) -> dict[str, Any]:
    """A Stripe object's data as a plain dict (stripe-python objects are not dicts)."""
    if obj is None:
        return {}
    return dict(obj.to_dict()) if hasattr(obj, "to_dict") else dict(obj)


def _meta(obj: Any) -> dict[str, str]:
    return dict(_as_dict(obj).get("metadata") or {})


def _status(obj: Any) -> str | None:
    status = _as_dict(obj).get("status")
    return str(status) if status is not None else None


class _Pusher:
    """One push run: the Stripe client, the ledger, and a cache of customers found by metadata."""

    def __init__(self, ledger: Ledger, stripe: Stripe, actor: str) -> None:
        self.ledger, self.stripe, self.actor = ledger, stripe, actor
        self.v1 = stripe.client.v1
        self._customers: dict[str, str] | None = None

    # -- records ------------------------------------------------------------------------------
    def _record(self, invoice_id: int, **values: Any) -> StripeInvoiceSync:
        with self.ledger.transaction() as session:
            row = session.get(StripeInvoiceSync, invoice_id, with_for_update=True)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_ms = now_ms()
            if "state" in values:
                audit(
                    session,
                    self.actor,
                    f"stripe.{values['state']}",
                    "invoice",
                    str(invoice_id),
                    stripe_invoice_id=row.stripe_invoice_id,
                )
            session.flush()
            session.expunge(row)
            return row

    def _sync_row(self, invoice: Invoice, mode: str) -> StripeInvoiceSync:
        with self.ledger.transaction() as session:
            row = session.get(StripeInvoiceSync, invoice.id, with_for_update=True)
            if row is None:
                row = StripeInvoiceSync(
                    invoice_id=invoice.id,
                    tenant_id=invoice.tenant_id,
                    mode=mode,
                    state=STATE_PENDING,
                    stripe_items={},
                    attempts=0,
                    updated_ms=now_ms(),
                )
                session.add(row)
            row.attempts += 1
            row.last_attempt_ms = now_ms()
            session.flush()
            session.expunge(row)
            return row

    # -- customer -----------------------------------------------------------------------------
    def _customer(self, row: StripeInvoiceSync, tenant: Tenant) -> str:
        if row.stripe_customer_id:
            return row.stripe_customer_id
        customer_id = tenant.stripe_customer_id or self._find_customer(tenant.tenant_id)
        if customer_id is None:
            created = self.stripe.call(
                f"create the customer of tenant {tenant.tenant_id}",
                self.v1.customers.create,
                params=docs.customer_params(tenant.tenant_id, tenant.name, tenant.contact_email),
                options={"idempotency_key": docs.customer_key(tenant.tenant_id)},
                creates=True,
            )
            customer_id = created.id
        assert customer_id is not None
        if self._customers is not None:
            self._customers[tenant.tenant_id] = customer_id
        with self.ledger.transaction() as session:
            fresh = session.get(Tenant, tenant.tenant_id)
            assert fresh is not None
            if fresh.stripe_customer_id != customer_id:
                fresh.stripe_customer_id = customer_id
                audit(
                    session, self.actor, "stripe.customer", "tenant", tenant.tenant_id, stripe_customer_id=customer_id
                )
        self._record(row.invoice_id, stripe_customer_id=customer_id, state=STATE_CUSTOMER)
        return customer_id

    def _find_customer(self, tenant_id: str) -> str | None:
        if self._customers is None:  # one listing per run, however many tenants need it
            self._customers = {}
            for customer in self.stripe.list_all("list customers", self.v1.customers, {}):
                owner = _meta(customer).get(docs.META_TENANT)
                if owner and owner not in self._customers:
                    self._customers[owner] = customer.id
        return self._customers.get(tenant_id)

    # -- invoice ------------------------------------------------------------------------------
    def _find_invoice(self, doc: docs.InvoiceDoc, customer_id: str) -> Any | None:
        for found in self.stripe.list_all(
            f"list the invoices of {customer_id}", self.v1.invoices, {"customer": customer_id}
        ):
            if _meta(found).get(docs.META_INVOICE) == str(doc.invoice_id):
                return found
        return None

    def _may_exist(self, row: StripeInvoiceSync) -> bool:
        """Whether Stripe may hold objects of this invoice (or pending items of another invoice of the tenant)
        that wattmeter did not record: only after an earlier attempt. The first attempt of an invoice whose
        tenant has no other unfinished push skips the metadata lookups: nothing can be there yet."""
        if row.attempts > 1:
            return True
        with self.ledger.transaction() as session:
            unfinished = session.scalar(
                select(StripeInvoiceSync.invoice_id)
                .where(
                    StripeInvoiceSync.tenant_id == row.tenant_id,
                    StripeInvoiceSync.invoice_id != row.invoice_id,
                    StripeInvoiceSync.state.not_in((STATE_FINALIZED, STATE_REPORTED, STATE_VOIDED)),
                )
                .limit(1)
            )
        return unfinished is not None

    def _items(self, row: StripeInvoiceSync, doc: docs.InvoiceDoc, customer_id: str, look: bool) -> None:
        done: dict[str, str] = dict(row.stripe_items or {})
        pending = []
        if look:
            pending = self.stripe.list_all(
                f"list the pending invoice items of {customer_id}",
                self.v1.invoice_items,
                {"customer": customer_id, "pending": True},
            )
        for item in pending:
            if _as_dict(item).get("invoice"):
                continue
            meta = _meta(item)
            owner = meta.get(docs.META_INVOICE)
            if owner == str(doc.invoice_id):
                done.setdefault(meta.get(docs.META_POSITION, ""), item.id)
            elif owner is not None:
                raise StripeCallFailed(
                    f"customer {customer_id} has pending items of wattmeter invoice "
                    f"{meta.get(docs.META_NUMBER, owner)}: "
                    "push that invoice first (or void it in wattmeter)"
                )
        # the items are recorded once, after the last (or the failing) one: an item created but not recorded
        # (a crash in between) is found by the lookup above on the next attempt, so a commit per item buys nothing
        recorded = dict(row.stripe_items or {})
        try:
            for line in doc.lines:
                if str(line.position) in done:
                    continue
                item = self.stripe.call(
                    f"create item {line.position} of {doc.number}",
                    self.v1.invoice_items.create,
                    params=docs.item_params(doc, line, customer_id),
                    options={"idempotency_key": docs.item_key(doc, line)},
                    creates=True,
                )
                done[str(line.position)] = item.id
        finally:
            if done != recorded:
                self._record(row.invoice_id, stripe_items=dict(done), state=STATE_ITEMS)

    def push_invoice(self, invoice: Invoice, tenant: Tenant) -> PushOutcome:
        doc = invoice_doc(invoice)
        row = self._sync_row(invoice, tenant.stripe_mode)
        if invoice.status == INVOICE_VOID:
            return self._void(row, doc)
        if row.state in DONE_STATES:
            return PushOutcome(doc.number, doc.tenant_id, "already pushed", row.stripe_invoice_id)
        customer_id = self._customer(row, tenant)
        if row.mode == "meters":
            return self._report_meters(row, doc, customer_id)
        stripe_invoice = None
        if row.stripe_invoice_id:
            stripe_invoice = self.stripe.call(
                f"retrieve {row.stripe_invoice_id}", self.v1.invoices.retrieve, row.stripe_invoice_id
            )
        else:
            look = self._may_exist(row)
            stripe_invoice = self._find_invoice(doc, customer_id) if look else None
            if stripe_invoice is None:
                self._items(row, doc, customer_id, look)
                stripe_invoice = self.stripe.call(
                    f"create the invoice for {doc.number}",
                    self.v1.invoices.create,
                    params=docs.invoice_params(doc, customer_id),
                    options={"idempotency_key": docs.invoice_key(doc)},
                    creates=True,
                )
            row = self._record(row.invoice_id, stripe_invoice_id=stripe_invoice.id, state=STATE_INVOICE)
        if row.state != STATE_FINALIZED and _status(stripe_invoice) == "draft":
            stripe_invoice = self.stripe.call(
                f"finalize {stripe_invoice.id} ({doc.number})",
                self.v1.invoices.finalize_invoice,
                stripe_invoice.id,
                options={"idempotency_key": docs.finalize_key(doc)},
                creates=True,
            )
        status = _status(stripe_invoice)
        status = status if status in ("paid", "void", "uncollectible") else "open"  # Stripe: finalized = open
        self._record(
            row.invoice_id,
            state=STATE_FINALIZED,
            pushed_ms=now_ms(),
            last_error=None,
            payment_status=row.payment_status or status,
        )
        return PushOutcome(doc.number, doc.tenant_id, "pushed", stripe_invoice.id)

    def _report_meters(self, row: StripeInvoiceSync, doc: docs.InvoiceDoc, customer_id: str) -> PushOutcome:
        done: dict[str, str] = dict(row.stripe_items or {})
        for position, params in docs.meter_events(doc, customer_id, int(time.time())):
            if str(position) in done:
                continue
            self.stripe.call(
                f"meter event {position} of {doc.number}",
                self.v1.billing.meter_events.create,
                params=params,
                options={"idempotency_key": str(params["identifier"])},
                creates=True,
            )
            done[str(position)] = str(params["identifier"])
            row = self._record(row.invoice_id, stripe_items=dict(done))
        self._record(row.invoice_id, state=STATE_REPORTED, pushed_ms=now_ms(), last_error=None)
        return PushOutcome(doc.number, doc.tenant_id, "reported", customer_id)

    def _void(self, row: StripeInvoiceSync, doc: docs.InvoiceDoc) -> PushOutcome:
        if row.state == STATE_VOIDED:
            return PushOutcome(doc.number, doc.tenant_id, "already voided", row.stripe_invoice_id)
        if row.mode == "meters":  # cancel each meter event sent (Stripe's meter event adjustments)
            for position, identifier in sorted((row.stripe_items or {}).items()):
                name = next(
                    (str(p["event_name"]) for pos, p in docs.meter_events(doc, "", 0) if str(pos) == position), None
                )
                if name is None:
                    continue
                self.stripe.call(
                    f"cancel meter event {identifier}",
                    self.v1.billing.meter_event_adjustments.create,
                    params={"event_name": name, "type": "cancel", "cancel": {"identifier": identifier}},
                    options={"idempotency_key": f"{identifier}-cancel"},
                    creates=True,
                )
            self._record(row.invoice_id, state=STATE_VOIDED, payment_status="void", last_error=None)
            return PushOutcome(doc.number, doc.tenant_id, "voided", None)
        stripe_invoice = None
        if row.stripe_invoice_id:
            stripe_invoice = self.stripe.call(
                f"retrieve {row.stripe_invoice_id}", self.v1.invoices.retrieve, row.stripe_invoice_id
            )
        elif row.stripe_customer_id:
            stripe_invoice = self._find_invoice(doc, row.stripe_customer_id)
        if stripe_invoice is not None:
            status = _status(stripe_invoice)
            if status in ("paid", "uncollectible"):
                raise StripeCallFailed(
                    f"{doc.number} is void in wattmeter but {stripe_invoice.id} is {status} in Stripe: "
                    "refund or credit it there"
                )
            if status != "void":
                if row.state != STATE_FINALIZED:  # created, never finalized: Stripe voids only open invoices
                    self.stripe.call(
                        f"finalize {stripe_invoice.id} ({doc.number}) to void it",
                        self.v1.invoices.finalize_invoice,
                        stripe_invoice.id,
                        options={"idempotency_key": docs.finalize_key(doc)},
                        creates=True,
                    )
                self.stripe.call(
                    f"void {stripe_invoice.id} ({doc.number})",
                    self.v1.invoices.void_invoice,
                    stripe_invoice.id,
                    options={"idempotency_key": docs.void_key(doc)},
                    creates=True,
                )
        elif row.stripe_customer_id:  # pushed partly: delete its pending items so no other invoice takes them
            for item in self.stripe.list_all(
                f"list the pending invoice items of {row.stripe_customer_id}",
                self.v1.invoice_items,
                {"customer": row.stripe_customer_id, "pending": True},
            ):
                if not _as_dict(item).get("invoice") and _meta(item).get(docs.META_INVOICE) == str(doc.invoice_id):
                    self.stripe.call(
                        f"delete item {item.id} of {doc.number}", self.v1.invoice_items.delete, item.id, creates=True
                    )
        self._record(row.invoice_id, state=STATE_VOIDED, payment_status="void", last_error=None)
        return PushOutcome(doc.number, doc.tenant_id, "voided", row.stripe_invoice_id)

    # -- credit notes -------------------------------------------------------------------------
    def push_credit_note(self, note: CreditNote, original: Invoice, sync: StripeInvoiceSync) -> PushOutcome:
        with self.ledger.transaction() as session:
            row = session.get(StripeCreditNoteSync, note.id, with_for_update=True)
            if row is None:
                row = StripeCreditNoteSync(credit_note_id=note.id, state=STATE_PENDING, attempts=0, updated_ms=now_ms())
                session.add(row)
            row.attempts += 1
            session.flush()
            session.expunge(row)
        if row.state == "created":
            return PushOutcome(note.number, note.tenant_id, "already pushed", row.stripe_credit_note_id)
        assert sync.stripe_invoice_id is not None and original.number is not None
        found = None
        for existing in self.stripe.list_all(
            f"list the credit notes of {sync.stripe_invoice_id}",
            self.v1.credit_notes,
            {"invoice": sync.stripe_invoice_id},
        ):
            if _meta(existing).get(docs.META_CREDIT_NOTE) == note.number:
                found = existing
                break
        if found is None:
            found = self.stripe.call(
                f"create credit note {note.number}",
                self.v1.credit_notes.create,
                params=docs.credit_note_params(
                    note.number,
                    original.number,
                    sync.stripe_invoice_id,
                    note.amount,
                    note.currency,
                    note.reason,
                    sync.payment_status == "paid",
                ),
                options={"idempotency_key": docs.credit_note_key(note.number)},
                creates=True,
            )
        with self.ledger.transaction() as session:
            stored = session.get(StripeCreditNoteSync, note.id)
            assert stored is not None
            stored.state, stored.stripe_credit_note_id, stored.last_error = "created", found.id, None
            stored.updated_ms = now_ms()
            audit(session, self.actor, "stripe.credit_note", "credit_note", note.number, stripe_credit_note_id=found.id)
        return PushOutcome(note.number, note.tenant_id, "credit note", found.id)


def _fail(ledger: Ledger, model: type[Any], key: int, error: str) -> None:
    with ledger.transaction() as session:
        row = session.get(model, key)
        if row is not None:
            row.last_error = error
            row.updated_ms = now_ms()


def push(
    ledger: Ledger,
    stripe: Stripe,
    actor: str,
    *,
    period: str | None = None,
    numbers: Sequence[str] = (),
    progress: Progress | None = None,
) -> PushReport:
    """Push every issued (and every voided) invoice of `period` (or those numbered), then their credit notes."""
    if period is not None:
        parse_period(period)
    with ledger.transaction() as session:
        query = select(Invoice).where(
            Invoice.status.in_((INVOICE_FINALIZED, INVOICE_VOID)), Invoice.number.is_not(None)
        )
        if period is not None:
            query = query.where(Invoice.period == period)
        if numbers:
            query = query.where(Invoice.number.in_(numbers))
        invoices = list(session.scalars(query.order_by(Invoice.tenant_id, Invoice.number)))
        missing = set(numbers) - {i.number for i in invoices}
        if missing:
            raise PaymentsError(f"no issued invoice numbered {sorted(missing)[0]!r}")
        tenants = {t.tenant_id: t for t in session.scalars(select(Tenant))}
        synced = set(session.scalars(select(StripeInvoiceSync.invoice_id)))
        for invoice in invoices:
            invoice.lines  # noqa: B018 -- load the lines inside the session
        session.expunge_all()
    pusher = _Pusher(ledger, stripe, actor)
    report = PushReport()
    for invoice in invoices:
        if invoice.status == INVOICE_VOID and invoice.id not in synced:
            continue  # voided before it ever reached Stripe
        if progress:
            progress(invoice.number or str(invoice.id))
        try:
            report.outcomes.append(pusher.push_invoice(invoice, tenants[invoice.tenant_id]))
        except StripeCallFailed as exc:
            _fail(ledger, StripeInvoiceSync, invoice.id, str(exc))
            report.outcomes.append(PushOutcome(invoice.number or "", invoice.tenant_id, "failed", error=str(exc)))
    report.outcomes += _push_credit_notes(ledger, pusher)
    return report


def _push_credit_notes(ledger: Ledger, pusher: _Pusher) -> list[PushOutcome]:
    """Every credit note not yet in Stripe whose corrected invoice is (of whichever period: a credit
    note issued while rating this month corrects an earlier one)."""
    with ledger.transaction() as session:
        rows = session.execute(
            select(CreditNote, Invoice, StripeInvoiceSync)
            .join(Invoice, Invoice.id == CreditNote.invoice_id)
            .join(StripeInvoiceSync, StripeInvoiceSync.invoice_id == Invoice.id)
            .outerjoin(StripeCreditNoteSync, StripeCreditNoteSync.credit_note_id == CreditNote.id)
            .where(StripeInvoiceSync.state == STATE_FINALIZED)
            .where((StripeCreditNoteSync.state.is_(None)) | (StripeCreditNoteSync.state != "created"))
            .order_by(CreditNote.id)
        ).all()
        session.expunge_all()
    outcomes = []
    for note, original, sync in rows:
        try:
            outcomes.append(pusher.push_credit_note(note, original, sync))
        except StripeCallFailed as exc:
            _fail(ledger, StripeCreditNoteSync, note.id, str(exc))
            outcomes.append(PushOutcome(note.number, note.tenant_id, "failed", error=str(exc)))
    return outcomes


def sync_rows(session: Session, period: str | None = None) -> list[tuple[Invoice, StripeInvoiceSync | None]]:
    """Issued invoices with their Stripe state (None: never pushed)."""
    query = (
        select(Invoice, StripeInvoiceSync)
        .outerjoin(StripeInvoiceSync, StripeInvoiceSync.invoice_id == Invoice.id)
        .where(Invoice.number.is_not(None))
        .order_by(Invoice.number)
    )
    if period is not None:
        query = query.where(Invoice.period == period)
    return [(invoice, sync) for invoice, sync in session.execute(query).all()]
