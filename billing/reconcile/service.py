"""Reconcile a period: gather the facts (the ledger, ONE aggregation over the Parquet, Stripe) and
hand them to the pure `billing.reconcile.waterfall`.

Scale: every tenant's complete usage of the period is one request over the same offset ranges
(everything up to the sink's cut-off), so `aggregate` answers them in one scan; what each invoice
counted, and what each later document took, are requests over the ranges recorded in
`usage_consumption`, which tenants invoiced in the same run share, so they add a scan per run,
not per tenant. Everything goes to `aggregate` in ONE call, and the rows that come back are
grouped (tenant, plan, model, segment) and (tenant, lease), never per record.

    from billing.reconcile.service import reconcile
    result = reconcile(ledger, usage_root, "2026-11", stripe=None)
    result.unexplained  # one line each: tenant, invoice, line
    result.flags        # what was not reconciled, and why
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from billing.common.errors import PeriodError
from billing.common.periods import parse_period, period_bounds
from billing.invoicing.errors import InvoicingError
from billing.invoicing.market_inputs import SETTLE_MS, lease_health, preempted_leases
from billing.leases.service import leases_overlapping
from billing.ledger.db import Ledger
from billing.ledger.db import now_ms as clock_ms
from billing.ledger.errors import LedgerError
from billing.ledger.lines import line_from_json, line_from_row
from billing.ledger.models import (
    INVOICE_FINALIZED,
    INVOICE_VOID,
    Credit,
    CreditDrawdown,
    CreditNote,
    Invoice,
    Lease,
    StripeInvoiceSync,
    Tenant,
    UsageConsumption,
)
from billing.ledger.store import card_spans
from billing.payments.client import Stripe
from billing.pricing.errors import PricingError
from billing.pricing.lines import InvoiceLine
from billing.pricing.market_terms import Availability, Preemption
from billing.pricing.segments import CardSpan, PricingSegment, pricing_segments
from billing.reconcile.errors import ReconcileError
from billing.reconcile.waterfall import (
    LEG_MONEY,
    LEG_QUANTITY,
    METERED_TIME,
    ROLE_ANCHOR,
    UNEXPLAINED,
    Destination,
    Drawdown,
    Item,
    LeasedTime,
    PaymentFacts,
    PeriodPricing,
    Quantities,
    Reconciliation,
    StoredInvoice,
    StripeLine,
    StripeView,
    TenantResult,
    collected_leg,
    gpu_hours_text,
    metered_per_lease,
    money_leg,
    quantity_leg,
)
from billing.usage.reader import (
    Cutoff,
    Engine,
    OffsetRange,
    UsageRequest,
    UsageResult,
    aggregate,
    lake_exists,
    read_cutoff,
)
from lake.store import LakeLocation
from schemas.leases import Lease as LeaseContract

Progress = Callable[[str], None]
_CHUNK = 500


@dataclass
class _Document:
    """A later document that took late usage of the period: its ranges and its lines for the period."""

    label: str
    number: str
    credit_note: bool
    order: tuple[int, int]
    ranges: list[OffsetRange] = field(default_factory=list)
    lines: tuple[InvoiceLine, ...] = ()
    amount: Decimal | None = None


@dataclass
class _TenantFacts:
    tenant: Tenant
    start_ms: int
    end_ms: int
    spans: list[CardSpan] = field(default_factory=list)
    segments: list[PricingSegment] = field(default_factory=list)
    contract_problem: str | None = None
    invoice: StoredInvoice | None = None
    invoice_rated_ms: int | None = None  # when its lines were last rated (a lease added later is not on it)
    counted: list[OffsetRange] = field(default_factory=list)
    documents: list[_Document] = field(default_factory=list)
    drafts_holding_late: list[str] = field(default_factory=list)
    drawdowns: list[Drawdown] = field(default_factory=list)
    sync: StripeInvoiceSync | None = None
    credit_notes: list[tuple[str, Decimal]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # complete | counted | doc<i> -> aggregate request key
    preempted: Mapping[str, Preemption] = field(default_factory=dict)  # leases the owner ended
    health: Mapping[str, Availability] = field(default_factory=dict)  # per plan: leased and unhealthy GPU-ms


def _stored_invoice(invoice: Invoice) -> StoredInvoice:
    return StoredInvoice(
        invoice.id,
        invoice.number,
        invoice.tenant_id,
        invoice.period,
        invoice.status,
        invoice.currency,
        invoice.subtotal,
        invoice.tax,
        invoice.total,
        invoice.credits_applied,
        invoice.amount_due,
        tuple(line_from_row(line) for line in sorted(invoice.lines, key=lambda line: line.position)),
    )


def _range(row: UsageConsumption) -> OffsetRange:
    return OffsetRange.from_json({"from": row.cutoff_from, "to": row.cutoff_to})


def _canonical(ranges: Iterable[OffsetRange]) -> str:
    """The same selection of files however it is spelled (a missing start is 0; empty partitions drop)."""
    spans = sorted(
        (partition, r.start.get(partition, 0), end)
        for r in ranges
        for partition, end in r.end.items()
        if end > r.start.get(partition, 0)
    )
    return json.dumps(spans)


class _Requests:
    """The aggregation requests of one reconciliation, each asked once, whatever asks it twice."""

    def __init__(self) -> None:
        self.requests: list[UsageRequest] = []
        self._keys: dict[tuple[str, str, int, int, tuple[int, ...]], str] = {}

    def ask(
        self, tenant_id: str, start_ms: int, end_ms: int, starts: tuple[int, ...], ranges: list[OffsetRange]
    ) -> str:
        identity = (tenant_id, _canonical(ranges), start_ms, end_ms, starts)
        key = self._keys.get(identity)
        if key is None:
            key = self._keys[identity] = f"{tenant_id}#{len(self.requests)}"
            self.requests.append(UsageRequest(key, tenant_id, start_ms, end_ms, starts, tuple(ranges)))
        return key


def _order(ranges: Sequence[OffsetRange]) -> int:
    """Where a document's ranges lie in the chain (they never overlap and chain per partition)."""
    return min((sum(r.start.get(p, 0) for p in r.end) for r in ranges), default=0)


def _gather_tenant(session: Session, tenant: Tenant, period: str) -> _TenantFacts:
    start, end = period_bounds(period, tenant.timezone)
    facts = _TenantFacts(tenant, start, end)
    try:
        facts.spans = card_spans(session, tenant.tenant_id, start, end)
        if facts.spans:
            facts.segments = pricing_segments(facts.spans, facts.spans[0].start_ms, facts.spans[-1].end_ms)
    except (LedgerError, PeriodError, PricingError) as exc:
        facts.contract_problem = str(exc)
        facts.spans, facts.segments = [], []
    invoice = session.scalar(
        select(Invoice).where(
            Invoice.tenant_id == tenant.tenant_id, Invoice.period == period, Invoice.status != INVOICE_VOID
        )
    )
    if invoice is not None:
        facts.invoice = _stored_invoice(invoice)
        facts.invoice_rated_ms = invoice.rated_ms
    rows = session.execute(
        select(UsageConsumption, Invoice, CreditNote)
        .outerjoin(Invoice, Invoice.id == UsageConsumption.invoice_id)
        .outerjoin(CreditNote, CreditNote.id == UsageConsumption.credit_note_id)
        .where(
            UsageConsumption.tenant_id == tenant.tenant_id,
            UsageConsumption.service_period == period,
            UsageConsumption.active.is_(True),
        )
        .order_by(UsageConsumption.id)
    ).all()
    documents: dict[tuple[str, int], _Document] = {}
    for row, owner, note in rows:
        offsets = _range(row)
        if owner is not None and invoice is not None and owner.id == invoice.id:
            facts.counted.append(offsets)
        elif owner is not None:
            if owner.status != INVOICE_FINALIZED:
                facts.drafts_holding_late.append(f"draft #{owner.id} of {owner.period}")
                continue
            held = documents.get(("invoice", owner.id))
            if held is None:
                lines = tuple(
                    line_from_row(line)
                    for line in sorted(owner.lines, key=lambda line: line.position)
                    if line.service_period == period and line.correction
                )
                held = documents[("invoice", owner.id)] = _Document(
                    f"correction lines on {owner.number}", str(owner.number), False, (0, row.id), lines=lines
                )
            held.ranges.append(offsets)
        elif note is not None:
            held = documents.get(("note", note.id))
            if held is None:
                lines = tuple(
                    line_from_json(line, index)
                    for index, line in enumerate(note.lines)
                    if line["service_period"] == period
                )
                held = documents[("note", note.id)] = _Document(
                    f"credit note {note.number}", note.number, True, (0, row.id), lines=lines, amount=note.amount
                )
            held.ranges.append(offsets)
    for document in documents.values():
        document.order = (_order(document.ranges), document.order[1])
    facts.documents = sorted(documents.values(), key=lambda d: d.order)
    facts.drafts_holding_late = sorted(set(facts.drafts_holding_late))
    if invoice is not None:
        draws = session.execute(
            select(CreditDrawdown, Credit)
            .join(Credit, Credit.credit_id == CreditDrawdown.credit_id)
            .where(CreditDrawdown.invoice_id == invoice.id)
            .order_by(CreditDrawdown.id)
        ).all()
        facts.drawdowns = [Drawdown(d.credit_id, d.amount, c.expires_ms, c.granted_ms) for d, c in draws]
        facts.sync = session.get(StripeInvoiceSync, invoice.id)
        facts.credit_notes = [
            (n.number, n.amount)
            for n in session.scalars(
                select(CreditNote).where(CreditNote.invoice_id == invoice.id).order_by(CreditNote.id)
            )
        ]
    return facts


def _quantities(result: UsageResult | None) -> Quantities:
    if result is None:
        return Quantities()
    return Quantities(tuple(result.usage), tuple(result.leases))


def _leases(session: Session, facts: Sequence[_TenantFacts], metered_ids: set[str]) -> dict[str, Lease]:
    """The ledger's leases overlapping each tenant's period, and any lease metered in it."""
    found: dict[str, Lease] = {}
    for fact in facts:
        query = select(Lease).where(
            Lease.tenant_id == fact.tenant.tenant_id,
            Lease.start_ms < fact.end_ms,
            or_(Lease.end_ms.is_(None), Lease.end_ms > fact.start_ms),
        )
        for lease in session.scalars(query):
            found[lease.lease_id] = lease
    missing = sorted(metered_ids - set(found))
    for index in range(0, len(missing), _CHUNK):
        for lease in session.scalars(select(Lease).where(Lease.lease_id.in_(missing[index : index + _CHUNK]))):
            found[lease.lease_id] = lease
    session.expunge_all()
    return found


def _plain(obj: Any) -> dict[str, Any]:
    """A Stripe object as a plain dict (stripe-python 16 objects are not dicts)."""
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    return dict(obj or {})


def _meta(data: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(data.get("metadata") or {}).items()}


def _invoice_item(line: dict[str, Any]) -> str | None:
    """The invoice item behind a line: `parent.invoice_item_details.invoice_item` (current API) or the
    older `invoice_item`."""
    item = line.get("invoice_item")
    if item:
        return str(item if isinstance(item, str) else dict(item).get("id"))
    details = dict(line.get("parent") or {}).get("invoice_item_details") or {}
    found = dict(details).get("invoice_item")
    return str(found) if found else None


def stripe_view(stripe: Stripe, stripe_invoice_id: str) -> StripeView:
    """What Stripe holds for one invoice: the invoice and every line, page by page."""
    v1 = stripe.client.v1
    invoice = _plain(stripe.call(f"retrieve {stripe_invoice_id}", v1.invoices.retrieve, stripe_invoice_id))
    lines: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = stripe.call(
            f"list the lines of {stripe_invoice_id}", v1.invoices.line_items.list, stripe_invoice_id, params=params
        )
        data = [_plain(line) for line in page.data]
        lines.extend(data)
        if not page.has_more or not data:
            break
        params = {"limit": 100, "starting_after": data[-1]["id"]}
    return StripeView(
        invoice_id=str(invoice["id"]),
        status=str(invoice.get("status") or ""),
        currency=str(invoice.get("currency") or ""),
        total=int(invoice.get("total") or 0),
        amount_paid=int(invoice.get("amount_paid") or 0),
        metadata=_meta(invoice),
        lines=tuple(
            StripeLine(
                str(line["id"]),
                int(line.get("amount") or 0),
                _meta(line),
                _invoice_item(line),
                str(line.get("description") or ""),
            )
            for line in lines
        ),
    )


def _clip(lease: Lease, start_ms: int, end_ms: int, now: int) -> int:
    lo = max(lease.start_ms, start_ms)
    hi = min(lease.end_ms if lease.end_ms is not None else end_ms, end_ms, now)
    return max(0, hi - lo)


def reconcile(
    ledger: Ledger,
    usage_root: LakeLocation,
    period: str,
    stripe: Stripe | None = None,
    *,
    tenant_ids: Sequence[str] | None = None,
    now_ms: int | None = None,
    stripe_skipped: str | None = None,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> Reconciliation:
    """Reconcile `period` (YYYY-MM, a month in each tenant's time zone): metered <-> invoiced <->
    collected per tenant. `stripe` None: the collected leg uses wattmeter's mirror of Stripe's
    webhooks (a flag says so, with `stripe_skipped` as the reason). `engine` runs the usage scan
    (`aggregate`'s default, DuckDB, unless told otherwise). Bad input raises ReconcileError."""
    try:
        parse_period(period)
    except (InvoicingError, PeriodError) as exc:
        raise ReconcileError(str(exc)) from None
    root = usage_root
    if not lake_exists(root):
        raise ReconcileError(
            f"no usage data at {root}: give the sink's usage lake (--usage-dir or $WATTMETER_USAGE_DIR)"
        )
    now = clock_ms() if now_ms is None else now_ms
    cutoff: Cutoff = read_cutoff(root)
    result = Reconciliation(period, dict(cutoff), now)
    if stripe is None:
        result.notes.append(
            "Stripe not consulted"
            + (f" ({stripe_skipped})" if stripe_skipped else "")
            + ": collected is wattmeter's mirror of Stripe's webhooks, lines not compared"
        )

    with ledger.transaction() as session:
        query = select(Tenant).order_by(Tenant.tenant_id)
        if tenant_ids:
            query = query.where(Tenant.tenant_id.in_(list(tenant_ids)))
            known = set(session.scalars(select(Tenant.tenant_id).where(Tenant.tenant_id.in_(list(tenant_ids)))))
            missing = sorted(set(tenant_ids) - known)
            if missing:
                raise ReconcileError(f"unknown tenant {missing[0]!r}")
        tenants = list(session.scalars(query))
        facts = [_gather_tenant(session, tenant, period) for tenant in tenants]
        session.expunge_all()

    # ONE aggregation: complete usage of every tenant (same ranges: one scan), what each invoice
    # counted and what each later document took (ranges shared by the tenants of one run)
    requests = _Requests()
    everything = [OffsetRange({p: 0 for p in cutoff}, dict(cutoff))]
    for fact in facts:
        tenant_id = fact.tenant.tenant_id
        starts = tuple(segment.start_ms for segment in fact.segments)
        complete_starts = starts if starts and starts[0] == fact.start_ms else (fact.start_ms, *starts)
        fact.keys["complete"] = requests.ask(tenant_id, fact.start_ms, fact.end_ms, complete_starts, everything)
        if fact.invoice is not None and fact.invoice.status == INVOICE_FINALIZED and starts:
            fact.keys["counted"] = requests.ask(tenant_id, fact.start_ms, fact.end_ms, starts, fact.counted)
            for index, document in enumerate(fact.documents):
                fact.keys[f"doc{index}"] = requests.ask(tenant_id, fact.start_ms, fact.end_ms, starts, document.ranges)
    if progress:
        progress(f"aggregating usage of {len(facts)} tenant(s): {len(requests.requests)} request(s), one call")
    with ledger.transaction() as session:
        ledger_leases: list[LeaseContract] = []
        preempted: dict[str, Preemption] = {}
        if facts:  # the ledger's leases over the tenants' periods, and which of them the owner ended
            window = (min(f.start_ms for f in facts), max(f.end_ms for f in facts))
            asking = {f.tenant.tenant_id for f in facts}
            ledger_leases = leases_overlapping(session, *window, asking)
            preempted = preempted_leases(session, *window, asking)
    results = (
        aggregate(root, requests.requests, ledger_leases, engine, apart=sorted(preempted))
        if requests.requests and cutoff
        else {}
    )

    metered_ids = {row.lease_id for result_ in results.values() for row in result_.leases}
    with ledger.transaction() as session:
        leases = _leases(session, facts, metered_ids)
        for fact in facts:  # the SLA's inputs, as the invoice was rated with them (billing.invoicing.market_inputs)
            counted = results.get(fact.keys.get("counted", ""))
            fact.preempted = preempted  # by lease id: the rater uses the tenant's own
            fact.health = lease_health(
                session,
                fact.tenant.tenant_id,
                fact.start_ms,
                fact.end_ms,
                counted.leases if counted is not None else (),
                now - SETTLE_MS,
            )

    for fact in facts:
        if progress:
            progress(fact.tenant.tenant_id)
        tenant_result = _reconcile_tenant(fact, results, leases, stripe, now, period)
        if tenant_result is not None:
            result.tenants.append(tenant_result)
    return result


def _reconcile_tenant(
    fact: _TenantFacts,
    results: dict[str, UsageResult],
    leases: dict[str, Lease],
    stripe: Stripe | None,
    now: int,
    period: str,
) -> TenantResult | None:
    tenant = fact.tenant
    tenant_id = tenant.tenant_id
    complete = _quantities(results.get(fact.keys["complete"]))
    leased = [
        LeasedTime(lease.lease_id, lease.gpu_uuid, lease.plan, _clip(lease, fact.start_ms, fact.end_ms, now))
        for lease in leases.values()
        if lease.tenant_id == tenant_id and _clip(lease, fact.start_ms, fact.end_ms, now) > 0
    ]
    metered = metered_per_lease(complete)
    invoice = fact.invoice
    if invoice is None and not leased and not any(metered.values()) and not complete.usage:
        return None  # nothing in this period: not part of the reconciliation
    label = invoice.label if invoice is not None else "none"
    out = TenantResult(
        tenant_id, tenant.currency, invoice.label if invoice else "", invoice.status if invoice else "none"
    )
    owners = {lease_id: leases[lease_id].tenant_id for lease_id in metered if lease_id in leases}
    if leased or owners:
        found = results.get(fact.keys["complete"])
        attributed = found.attributed if found is not None else {}
        rated = fact.invoice_rated_ms
        unbilled = {
            lease_id: ms
            for lease_id, ms in attributed.items()
            if rated is not None and lease_id in leases and leases[lease_id].created_ms > rated
        }
        out.items += quantity_leg(tenant_id, label, leased, metered, owners, attributed, unbilled)
    else:  # leases kept outside the billing database for this tenant: nothing to set against the meter
        out.items.append(
            Item(
                LEG_QUANTITY,
                METERED_TIME,
                quantity_ms=sum(metered.values()),
                role=ROLE_ANCHOR,
                detail="allocated GPU time of every usage record of the period in the Parquet now",
            )
        )
        out.flags.append(
            f"tenant {tenant_id}: the ledger holds none of its leases in {period} "
            f"({gpu_hours_text(sum(metered.values()))} GPU-h metered on {len(metered)} lease(s) it does "
            "not know): quantity leg not reconciled"
        )

    if fact.contract_problem is not None:
        out.items.append(
            Item(
                LEG_MONEY,
                UNEXPLAINED,
                None,
                None,
                "contracts cannot price the period",
                False,
                f"tenant {tenant_id}, invoice {label}: {fact.contract_problem}",
            )
        )
        return out
    if tenant.internal:  # the owner's own use: metered, never invoiced
        out.flags.append(f"tenant {tenant_id}: internal (the owner's own use): metered, never invoiced")
        return out
    if invoice is None:
        if not complete.usage and fact.spans:  # `run` makes no invoice where there is nothing to bill
            out.flags.append(f"tenant {tenant_id}: nothing metered in {period}, so no invoice")
            return out
        why = "no contract in the period" if not fact.spans else "the period has not been run"
        out.flags.append(
            f"tenant {tenant_id}: {gpu_hours_text(complete.allocated_ms)} GPU-h metered in {period} but "
            f"no invoice ({why}): not invoiced yet"
        )
        return out
    if invoice.status != INVOICE_FINALIZED:
        out.flags.append(
            f"tenant {tenant_id}: the {period} invoice is {invoice.label}, not issued: money and "
            "collected legs not reconciled"
        )
        return out
    if not fact.spans:
        out.items.append(
            Item(
                LEG_MONEY,
                UNEXPLAINED,
                None,
                None,
                "no rate card for an issued invoice",
                False,
                f"tenant {tenant_id}, invoice {label}: issued, but no contract prices {period} now",
            )
        )
        return out

    pricing = PeriodPricing(
        tenant_id,
        period,
        invoice.currency,
        tenant.tax_jurisdiction,
        fact.start_ms,
        fact.end_ms,
        tuple(fact.spans),
        tuple(fact.segments),
        fact.preempted,
        fact.health,
    )
    counted = _quantities(results.get(fact.keys.get("counted", "")))
    destinations = [
        Destination(
            d.label, d.number, d.credit_note, _quantities(results.get(fact.keys.get(f"doc{i}", ""))), d.lines, d.amount
        )
        for i, d in enumerate(fact.documents)
    ]
    starts = {lease_id: lease.start_ms for lease_id, lease in leases.items()}
    money = money_leg(pricing, invoice, complete, counted, destinations, starts, fact.drawdowns)
    out.items += money.items
    out.metered, out.invoiced = money.metered, invoice.amount_due
    if fact.drafts_holding_late:
        out.flags.append(
            f"tenant {tenant_id}: late usage of {period} is held as corrections on "
            f"{', '.join(fact.drafts_holding_late)} (not issued yet)"
        )

    sync = fact.sync
    if sync is None or sync.state in ("pending", "customer", "items", "invoice"):
        state = "never pushed" if sync is None else f"push stopped at step {sync.state!r}"
        out.flags.append(
            f"tenant {tenant_id}, invoice {label}: not pushed to Stripe ({state}): collected not reconciled"
        )
        return out
    if sync.mode == "meters" or sync.state == "reported":
        out.flags.append(
            f"tenant {tenant_id}, invoice {label}: meters mode (usage reported to Stripe meters, Stripe "
            "prices it): collected not reconciled line by line"
        )
        return out
    view = None
    if stripe is not None and sync.stripe_invoice_id:
        view = stripe_view(stripe, sync.stripe_invoice_id)
        mirror = sync.payment_status or "open"
        stripe_state = view.status
        if stripe_state != mirror and not (mirror == "failed" and stripe_state == "open"):
            out.flags.append(
                f"tenant {tenant_id}, invoice {label}: Stripe says {stripe_state}, wattmeter's webhook "
                f"mirror says {mirror} (events not applied yet)"
            )
    facts = PaymentFacts(
        sync.payment_status,
        sync.amount_paid,
        {str(k): str(v) for k, v in sync.stripe_items.items()},
        view,
        tuple(fact.credit_notes),
    )
    collected = collected_leg(tenant_id, invoice, facts)
    out.items += collected.items
    out.collected = collected.collected
    return out
