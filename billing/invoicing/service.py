"""Invoices: draft (deterministically regenerated), finalize (gap-free number, content hash),
void, late-usage corrections and credit notes, explain.

The invariants are BILLING.md's:
1. one invoice per tenant per period: a unique index among invoices that are not void, and a
   row lock while a draft is regenerated, so two `run`s at once make one;
2. regenerating a draft with no new usage writes nothing and says so (content hash);
3. an issued invoice never changes (the ORM and database triggers refuse it);
4. usage that lands after its period's invoice was issued is found by offset ranges
   (`billing.invoicing.consumption`) and becomes correction lines that keep their service
   period on the tenant's next invoice, or a credit note when it lowers the amount;
5. every line records the query that `explain` re-runs over the Parquet.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.common.periods import parse_period, period_bounds, period_of
from billing.invoicing.consumption import overlaps, unconsumed
from billing.invoicing.errors import ImmutableInvoice, InvoicingError
from billing.invoicing.market_inputs import SETTLE_MS, lease_health, preempted_leases
from billing.leases.service import leases_overlapping
from billing.ledger.db import Ledger, audit, now_ms
from billing.ledger.errors import NotFound
from billing.ledger.lines import line_from_json, line_from_row, line_json, row_values
from billing.ledger.models import (
    INVOICE_DRAFT,
    INVOICE_FINALIZED,
    INVOICE_VOID,
    CreditDrawdown,
    CreditNote,
    Invoice,
    InvoiceLineRow,
    Lease,
    MonthClose,
    NumberSequence,
    Tenant,
    UsageConsumption,
)
from billing.ledger.store import card_spans, credit_balances
from billing.pricing.lines import InvoiceLine
from billing.pricing.market_terms import Preemption
from billing.pricing.rating import (
    CreditGrant,
    LeaseQuantity,
    line_key,
    rate_correction,
    rate_tenant,
    rounding_uplift,
    tier_quantity,
)
from billing.pricing.segments import CardSpan, PricingSegment, pricing_segments
from billing.usage.reader import (
    Cutoff,
    Engine,
    Explanation,
    OffsetRange,
    UsageRequest,
    UsageResult,
    aggregate,
    read_cutoff,
)
from lake.store import LakeLocation
from schemas.leases import Lease as LeaseContract

INVOICE_SEQUENCE = "invoice"
CREDIT_NOTE_SEQUENCE = "credit_note"
Progress = Callable[[str], None]


def _prefix(sequence: str) -> str:
    if sequence == INVOICE_SEQUENCE:
        return os.environ.get("WATTMETER_INVOICE_PREFIX", "WM-")
    return os.environ.get("WATTMETER_CREDIT_NOTE_PREFIX", "WM-CN-")


@dataclass
class TenantOutcome:
    tenant_id: str
    period: str
    status: str  # created | updated | unchanged | issued | no contract | no invoice | withdrawn | internal
    invoice_id: int | None = None
    number: str | None = None
    currency: str = ""
    total: Decimal = Decimal(0)
    amount_due: Decimal = Decimal(0)
    corrections: int = 0
    credit_notes: list[str] = field(default_factory=list)
    note: str = ""  # why there is no invoice ("no invoice", "withdrawn")


NO_INVOICE_WHY = "no usage, no commitment, no correction"
IDLE_STATUSES = ("unchanged", "issued", "no contract", "no invoice", "internal")


@dataclass
class RunReport:
    period: str
    cutoff: Cutoff
    outcomes: list[TenantOutcome] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return all(o.status in IDLE_STATUSES for o in self.outcomes) and not any(o.credit_notes for o in self.outcomes)


@dataclass(frozen=True)
class _Correction:
    service_period: str
    start_ms: int
    end_ms: int
    spans: list[CardSpan]
    segments: list[PricingSegment]
    late: tuple[OffsetRange, ...]  # what no issued document counted yet
    billed: list[InvoiceLine]
    everything: tuple[OffsetRange, ...] = ()  # every file up to the cut-off: the period's complete usage


@dataclass(frozen=True)
class _TenantPlan:
    tenant: Tenant
    period: str
    start_ms: int
    end_ms: int
    spans: list[CardSpan]
    segments: list[PricingSegment]
    own_ranges: tuple[OffsetRange, ...]  # empty when the period's invoice is already issued
    corrections: list[_Correction]
    issued: Invoice | None


def _consumption(tenant_id: str, service_period: str, offset_range: OffsetRange, **owner: int) -> UsageConsumption:
    """A row saying that an invoice (invoice_id=) or a credit note (credit_note_id=) counted `offset_range`."""
    as_json = offset_range.to_json()
    return UsageConsumption(
        tenant_id=tenant_id,
        service_period=service_period,
        cutoff_from=as_json["from"],
        cutoff_to=as_json["to"],
        **owner,
    )


def _range_of(row: UsageConsumption) -> OffsetRange:
    return OffsetRange.from_json({"from": row.cutoff_from, "to": row.cutoff_to})


def _ranges_taken(session: Session, tenant_id: str, period: str, exclude_invoice: int | None) -> list[OffsetRange]:
    """Ranges counted by issued invoices, by credit notes, and by drafts other than `exclude_invoice`."""
    rows = session.execute(
        select(UsageConsumption, Invoice.status)
        .outerjoin(Invoice, Invoice.id == UsageConsumption.invoice_id)
        .where(UsageConsumption.tenant_id == tenant_id, UsageConsumption.service_period == period)
        .where(UsageConsumption.active.is_(True))
    ).all()
    taken = []
    for row, status in rows:
        if row.invoice_id is not None and (row.invoice_id == exclude_invoice or status == INVOICE_DRAFT):
            continue
        taken.append(_range_of(row))
    return taken


def _segment_starts(segments: Sequence[PricingSegment]) -> tuple[int, ...]:
    return tuple(s.start_ms for s in segments)


def _current_invoice(session: Session, tenant_id: str, period: str, lock: bool = False) -> Invoice | None:
    query = select(Invoice).where(
        Invoice.tenant_id == tenant_id, Invoice.period == period, Invoice.status != INVOICE_VOID
    )
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def _plan_tenant(session: Session, tenant: Tenant, period: str, cutoff: Cutoff) -> _TenantPlan | None:
    start, end = period_bounds(period, tenant.timezone)
    spans = card_spans(session, tenant.tenant_id, start, end)
    if not spans:
        return None
    segments = pricing_segments(spans, spans[0].start_ms, spans[-1].end_ms)
    current = _current_invoice(session, tenant.tenant_id, period)
    issued = current if current is not None and current.status == INVOICE_FINALIZED else None
    own: tuple[OffsetRange, ...] = ()
    if issued is None:
        taken = _ranges_taken(session, tenant.tenant_id, period, current.id if current else None)
        own = unconsumed(taken, cutoff)
    corrections = []
    for service_period in _billed_periods(session, tenant.tenant_id, period):
        s_start, s_end = period_bounds(service_period, tenant.timezone)
        s_spans = card_spans(session, tenant.tenant_id, s_start, s_end)
        if not s_spans:
            continue
        taken = _ranges_taken(session, tenant.tenant_id, service_period, current.id if current else None)
        late = unconsumed(taken, cutoff)
        if late:
            s_segments = pricing_segments(s_spans, s_spans[0].start_ms, s_spans[-1].end_ms)
            billed = _billed_lines(session, tenant.tenant_id, service_period)
            everything = (OffsetRange({}, dict(cutoff)),)
            corrections.append(
                _Correction(service_period, s_start, s_end, s_spans, s_segments, late, billed, everything)
            )
    return _TenantPlan(tenant, period, start, end, spans, segments, own, corrections, issued)


def _billed_periods(session: Session, tenant_id: str, before: str) -> list[str]:
    """The tenant's periods before `before` whose billing is done, where late usage becomes corrections:
    those with its issued invoice, and those it had no invoice in (no usage, no commitment, no
    correction) that were closed: another tenant's invoice of the period is issued, or the month close
    finalized it. A period whose only invoice was voided is not one: it is run again."""
    issued = set(
        session.scalars(
            select(Invoice.period).where(
                Invoice.tenant_id == tenant_id, Invoice.status == INVOICE_FINALIZED, Invoice.period < before
            )
        )
    )
    closed = set(
        session.scalars(select(Invoice.period).where(Invoice.status == INVOICE_FINALIZED, Invoice.period < before))
    )
    closed |= set(
        session.scalars(
            select(MonthClose.period).where(
                MonthClose.period < before, MonthClose.step.in_(("finalized", "pushed", "reconciled"))
            )
        )
    )
    invoiced = set(session.scalars(select(Invoice.period).where(Invoice.tenant_id == tenant_id)))
    return sorted(issued | (closed - invoiced))


def _billed_lines(session: Session, tenant_id: str, service_period: str) -> list[InvoiceLine]:
    """What issued documents already billed for a tenant's service period: the period's invoice,
    corrections of it on later invoices, and credit notes."""
    rows = session.scalars(
        select(InvoiceLineRow)
        .join(Invoice, Invoice.id == InvoiceLineRow.invoice_id)
        .where(
            Invoice.tenant_id == tenant_id,
            Invoice.status == INVOICE_FINALIZED,
            InvoiceLineRow.service_period == service_period,
        )
    )
    billed = [line_from_row(row) for row in rows]
    for note in session.scalars(select(CreditNote).where(CreditNote.tenant_id == tenant_id)):
        billed += [
            line_from_json(line, index)
            for index, line in enumerate(note.lines)
            if line["service_period"] == service_period
        ]
    return billed


def _usage_query(
    tenant_id: str,
    line: InvoiceLine,
    ranges: tuple[OffsetRange, ...],
    start_ms: int,
    end_ms: int,
    correction: _Correction | None = None,
) -> dict[str, Any]:
    """The query `explain` re-runs, and its `rule`: how the line's quantity follows from the rows it selects.

    A GPU-time line selects its plan and model (the empty model too: the unknown model's own line), a
    rounding line its leases' rows over the whole period. A correction of a tier or rounding line is the
    period's complete usage re-derived, less what was billed (`billed_ms`); other corrections are the
    late usage itself."""
    gpu = line.base_unit == "ms"
    measure = {"ms": "allocated_gpu_ms", "mJ": "energy_mj"}.get(line.base_unit, "")
    segments = [list(s) for s in line.segments]
    rule: dict[str, Any] = {"kind": "sum"}
    if line.kind == "gpu_time_rounding":
        leases = line.basis.leases if line.basis is not None else ()
        segments = [[start_ms, end_ms]]
        rules = [{"lease_id": x.lease_id, "increment_ms": x.increment_ms, "minimum_ms": x.minimum_ms} for x in leases]
        rule = {"kind": "lease_rounding", "leases": rules}
    elif line.tier is not None:
        basis = line.basis
        rule = {"kind": "none"}  # a correction removing the tier: no usage priced there now
        if basis is not None and basis.rule == "tier":
            rule = {"kind": "tier", "mode": basis.tier_mode, "lower_ms": basis.lower_ms, "upper_ms": basis.upper_ms}
    if correction is not None and rule["kind"] != "sum":
        ranges = correction.everything
        key = line_key(line)
        rule["billed_ms"] = sum(b.quantity_base for b in correction.billed if line_key(b) == key)
    return {
        "tenant_id": tenant_id,
        "measure": measure,
        "plan": line.plan if gpu else None,
        "model": line.model if gpu else None,
        "segments": segments,
        "ranges": [r.to_json() for r in ranges],
        "service_start_ms": start_ms,
        "service_end_ms": end_ms,
        "rule": rule,
    }


@dataclass(frozen=True)
class ExplainedQuantity:
    """A line's quantity re-derived from its re-run query (None: a line recorded before queries carried
    their rule, whose tier or rounding cannot be re-derived), and the per-GPU rows behind it."""

    quantity: int | None
    per_gpu: list[tuple[str, str, int, int]]  # (gpu_uuid, lease_id, records, quantity)
    rule: str


def explained_quantity(kind: str, tier: int | None, query: dict[str, Any], result: Explanation) -> ExplainedQuantity:
    """What the line prices, from `reader.explain`'s answer to its recorded query, by the rater's own rules."""
    rule = query.get("rule")
    if rule is None:  # recorded before the rule was
        legacy = kind == "gpu_time_rounding" or tier is not None
        return ExplainedQuantity(None if legacy else result.quantity, result.per_gpu, "legacy" if legacy else "sum")
    per_gpu = result.per_gpu
    if rule["kind"] == "tier":
        upper = None if rule["upper_ms"] is None else int(rule["upper_ms"])
        quantity = tier_quantity(result.quantity, str(rule["mode"]), int(rule["lower_ms"]), upper)
    elif rule["kind"] == "lease_rounding":
        leases = {lease["lease_id"]: lease for lease in rule["leases"]}
        per_gpu = [row for row in per_gpu if row[1] in leases]
        allocated: dict[str, int] = dict.fromkeys(leases, 0)
        for _, lease_id, _, ms in per_gpu:
            allocated[lease_id] += ms
        quantity = sum(
            rounding_uplift(allocated[i], int(lease["increment_ms"]), int(lease["minimum_ms"]))
            for i, lease in leases.items()
        )
    elif rule["kind"] == "none":
        quantity = 0
    else:
        quantity = result.quantity
    return ExplainedQuantity(quantity - int(rule.get("billed_ms", 0)), per_gpu, str(rule["kind"]))


@dataclass
class _Draft:
    lines: list[dict[str, Any]]
    consumptions: list[tuple[str, OffsetRange]]  # (service period, range)
    credit_notes: list[tuple[str, list[dict[str, Any]], Decimal, tuple[OffsetRange, ...]]]
    drawdowns: list[tuple[str, Decimal]]

    def content_hash(self, currency: str, period: str, totals: dict[str, str]) -> str:
        body = {
            "currency": currency,
            "period": period,
            "totals": totals,
            "lines": self.lines,
            "consumptions": [[p, r.to_json()] for p, r in self.consumptions],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _line_dict(line: InvoiceLine, service_period: str, correction: bool, query: dict[str, Any]) -> dict[str, Any]:
    """The line as a draft (and its content hash) keeps it: stored in `service_period`."""
    return line_json(replace(line, service_period=service_period, correction=correction or line.correction), query)


def _query_key(line: InvoiceLine) -> tuple[Any, ...]:
    return (
        line.kind,
        line.service_start_ms,
        line.card_name,
        line.card_version,
        line.plan,
        line.model,
        line.tou_period,
        line.tier,
        line.correction,
    )


def _lease_starts(session: Session, leases: list[LeaseQuantity]) -> list[LeaseQuantity]:
    """Leases with their start from the ledger: a lease's minimum is charged in the period it starts."""
    ids = [lease.lease_id for lease in leases]
    starts = (
        dict(session.execute(select(Lease.lease_id, Lease.start_ms).where(Lease.lease_id.in_(ids))).all())
        if ids
        else {}
    )
    return [replace(lease, lease_start_ms=starts.get(lease.lease_id)) for lease in leases]


def _build_draft(
    session: Session,
    plan: _TenantPlan,
    results: dict[str, UsageResult],
    credits: list[CreditGrant],
    preempted: Mapping[str, Preemption],
) -> tuple[_Draft, dict[str, Decimal]]:
    tenant = plan.tenant
    as_of = now_ms() - SETTLE_MS
    draft = _Draft([], [], [], [])
    corrections: list[InvoiceLine] = []
    queries: dict[tuple[Any, ...], dict[str, Any]] = {}
    for correction in plan.corrections:
        complete = results[f"{tenant.tenant_id}/{correction.service_period}/complete"]
        lines = rate_correction(
            tenant_id=tenant.tenant_id,
            usage=complete.usage,
            leases=_lease_starts(session, complete.leases),
            segments=correction.segments,
            spans=correction.spans,
            service_start_ms=correction.start_ms,
            service_end_ms=correction.end_ms,
            billed=correction.billed,
            preemptions=preempted,
            health=lease_health(
                session, tenant.tenant_id, correction.start_ms, correction.end_ms, complete.leases, as_of
            ),
        )
        if not lines:
            continue
        dicts = [
            _line_dict(
                line,
                correction.service_period,
                True,
                _usage_query(
                    tenant.tenant_id, line, correction.late, correction.start_ms, correction.end_ms, correction
                ),
            )
            for line in lines
        ]
        if sum((line.amount for line in lines), Decimal(0)) < 0:
            draft.credit_notes.append(
                (correction.service_period, dicts, -sum((line.amount for line in lines), Decimal(0)), correction.late)
            )
            continue
        for line, as_dict in zip(lines, dicts):
            queries[_query_key(line)] = as_dict["usage_query"]
        corrections += lines
        draft.consumptions.extend((correction.service_period, r) for r in correction.late)
    if plan.issued is not None:
        return draft, {}
    result = results[f"{tenant.tenant_id}/{plan.period}"]
    rated = rate_tenant(
        tenant_id=tenant.tenant_id,
        usage=result.usage,
        leases=_lease_starts(session, result.leases),
        segments=plan.segments,
        spans=plan.spans,
        tax_jurisdiction=tenant.tax_jurisdiction,
        credits=credits,
        service_start_ms=plan.start_ms,
        service_end_ms=plan.end_ms,
        corrections=corrections,
        preemptions=preempted,
        health=lease_health(session, tenant.tenant_id, plan.start_ms, plan.end_ms, result.leases, as_of),
    )
    for line in rated.lines:
        service_period = period_of(line.service_start_ms, tenant.timezone) if line.correction else plan.period
        query = queries.get(_query_key(line)) or _usage_query(
            tenant.tenant_id, line, plan.own_ranges, plan.start_ms, plan.end_ms
        )
        draft.lines.append(_line_dict(line, service_period, line.correction, query))
    draft.consumptions.extend((plan.period, r) for r in plan.own_ranges)
    draft.drawdowns = list(rated.credit_drawdowns)
    totals = {
        "subtotal": rated.subtotal,
        "tax": rated.tax,
        "total": rated.total,
        "credits_applied": rated.credits_applied,
        "amount_due": rated.amount_due,
    }
    return draft, totals


def _usage_requests(plans: Sequence[_TenantPlan], plan_cutoff: Cutoff) -> list[UsageRequest]:
    requests = []
    for plan in plans:
        tenant_id = plan.tenant.tenant_id
        if plan.issued is None:
            requests.append(
                UsageRequest(
                    f"{tenant_id}/{plan.period}",
                    tenant_id,
                    plan.start_ms,
                    plan.end_ms,
                    _segment_starts(plan.segments),
                    plan.own_ranges,
                )
            )
        for c in plan.corrections:  # the period's complete usage: rating subtracts what was billed
            everything = (OffsetRange({}, dict(plan_cutoff)),)
            requests.append(
                UsageRequest(
                    f"{tenant_id}/{c.service_period}/complete",
                    tenant_id,
                    c.start_ms,
                    c.end_ms,
                    _segment_starts(c.segments),
                    everything,
                )
            )
    return requests


def _take_number(session: Session, sequence: str) -> str:
    """The next number of a gap-free sequence, taken under a row lock in the caller's transaction."""
    row = session.scalar(select(NumberSequence).where(NumberSequence.name == sequence).with_for_update())
    if row is None:
        try:
            with session.begin_nested():
                session.add(NumberSequence(name=sequence, next_value=1))
        except IntegrityError:
            pass
        row = session.scalar(select(NumberSequence).where(NumberSequence.name == sequence).with_for_update())
        assert row is not None
    value = row.next_value
    row.next_value = value + 1
    return f"{_prefix(sequence)}{value:06d}"


def _issue_credit_note(
    session: Session,
    actor: str,
    tenant: Tenant,
    service_period: str,
    lines: list[dict[str, Any]],
    amount: Decimal,
    ranges: tuple[OffsetRange, ...],
) -> str:
    original = session.scalar(
        select(Invoice).where(
            Invoice.tenant_id == tenant.tenant_id, Invoice.period == service_period, Invoice.status == INVOICE_FINALIZED
        )
    )
    if original is None:
        raise InvoicingError(f"no issued invoice of {tenant.tenant_id} for {service_period} to credit")
    number = _take_number(session, CREDIT_NOTE_SEQUENCE)
    note = CreditNote(
        number=number,
        tenant_id=tenant.tenant_id,
        invoice_id=original.id,
        currency=tenant.currency,
        amount=amount,
        reason=f"usage for {service_period} corrected after {original.number} was issued",
        lines=lines,
        created_ms=now_ms(),
    )
    session.add(note)
    session.flush()
    for offset_range in ranges:
        session.add(_consumption(tenant.tenant_id, service_period, offset_range, credit_note_id=note.id))
    audit(session, actor, "credit_note.issue", "credit_note", number, invoice=original.number, amount=str(amount))
    return number


def _write_draft(
    session: Session,
    actor: str,
    plan: _TenantPlan,
    cutoff: Cutoff,
    draft: _Draft,
    totals: dict[str, Decimal],
    outcome: TenantOutcome,
) -> None:
    tenant = plan.tenant
    for service_period, lines, amount, ranges in draft.credit_notes:
        outcome.credit_notes.append(_issue_credit_note(session, actor, tenant, service_period, lines, amount, ranges))
    if plan.issued is not None:
        outcome.status = "issued"
        outcome.invoice_id, outcome.number = plan.issued.id, plan.issued.number
        return
    if not draft.lines:  # nothing to bill: no invoice (and no draft left from an earlier run)
        _withdraw_draft(session, actor, plan, outcome)
        return
    str_totals = {k: str(v) for k, v in totals.items()}
    digest = draft.content_hash(tenant.currency, plan.period, str_totals)
    invoice = _current_invoice(session, tenant.tenant_id, plan.period, lock=True)
    if invoice is None:
        try:
            with session.begin_nested():
                invoice = Invoice(
                    tenant_id=tenant.tenant_id,
                    period=plan.period,
                    period_start_ms=plan.start_ms,
                    period_end_ms=plan.end_ms,
                    status=INVOICE_DRAFT,
                    currency=tenant.currency,
                    content_hash="",
                    usage_cutoff={str(p): o for p, o in cutoff.items()},
                    rated_ms=now_ms(),
                    **totals,
                )
                session.add(invoice)
            outcome.status = "created"
        except IntegrityError:  # another run created it a moment ago: regenerate that one
            invoice = _current_invoice(session, tenant.tenant_id, plan.period, lock=True)
            assert invoice is not None
            outcome.status = "updated"
    else:
        outcome.status = "updated"
    outcome.invoice_id, outcome.currency = invoice.id, tenant.currency
    outcome.total, outcome.amount_due = totals["total"], totals["amount_due"]
    outcome.corrections = sum(1 for line in draft.lines if line["correction"])
    if invoice.status == INVOICE_FINALIZED:
        outcome.status, outcome.number = "issued", invoice.number
        return
    if invoice.content_hash == digest:
        outcome.status = "unchanged"
        return
    invoice.lines.clear()
    session.flush()
    for position, line in enumerate(draft.lines):
        invoice.lines.append(InvoiceLineRow(position=position, **row_values(line)))
    for key, value in totals.items():
        setattr(invoice, key, value)
    invoice.content_hash = digest
    invoice.usage_cutoff = {str(p): o for p, o in cutoff.items()}
    invoice.rated_ms = now_ms()
    session.query(UsageConsumption).filter(UsageConsumption.invoice_id == invoice.id).delete()
    session.query(CreditDrawdown).filter(CreditDrawdown.invoice_id == invoice.id).delete()
    for service_period, offset_range in draft.consumptions:
        session.add(_consumption(tenant.tenant_id, service_period, offset_range, invoice_id=invoice.id))
    for credit_id, amount in draft.drawdowns:
        session.add(CreditDrawdown(credit_id=credit_id, invoice_id=invoice.id, amount=amount))
    audit(
        session,
        actor,
        f"invoice.{outcome.status}",
        "invoice",
        str(invoice.id),
        tenant_id=tenant.tenant_id,
        period=plan.period,
        total=str(totals["total"]),
        content_hash=digest,
    )


def _withdraw_draft(session: Session, actor: str, plan: _TenantPlan, outcome: TenantOutcome) -> None:
    """No invoice for a tenant with no usage, no commitment and no correction: say why, and delete a
    draft an earlier run made (say an empty one from before this rule); an issued one is never touched."""
    tenant = plan.tenant
    outcome.status, outcome.note = "no invoice", NO_INVOICE_WHY
    invoice = _current_invoice(session, tenant.tenant_id, plan.period, lock=True)
    if invoice is None:
        return
    if invoice.status == INVOICE_FINALIZED:
        outcome.status, outcome.note = "issued", ""
        outcome.invoice_id, outcome.number = invoice.id, invoice.number
        return
    session.query(UsageConsumption).filter(UsageConsumption.invoice_id == invoice.id).delete()
    session.query(CreditDrawdown).filter(CreditDrawdown.invoice_id == invoice.id).delete()
    invoice.lines.clear()
    session.flush()
    session.delete(invoice)
    outcome.status = "withdrawn"
    details = {"tenant_id": tenant.tenant_id, "period": plan.period, "reason": NO_INVOICE_WHY}
    audit(session, actor, "invoice.withdraw", "invoice", str(invoice.id), **details)


def run_period(
    ledger: Ledger,
    usage_root: LakeLocation,
    period: str,
    actor: str,
    tenant_ids: Sequence[str] | None = None,
    progress: Progress | None = None,
    *,
    engine: Engine | None = None,
) -> RunReport:
    """Rate every tenant with a contract in `period` into its draft invoice (or corrections), except
    internal tenants (the owner's own use: outcome "internal", never invoiced, so never pushed to Stripe);
    `engine` runs the usage scans (`aggregate`'s default, DuckDB, unless told otherwise)."""
    parse_period(period)
    cutoff = read_cutoff(usage_root)
    report = RunReport(period, cutoff)
    with ledger.transaction() as session:
        query = select(Tenant).order_by(Tenant.tenant_id)
        if tenant_ids:
            query = query.where(Tenant.tenant_id.in_(tenant_ids))
            missing = set(tenant_ids) - {t.tenant_id for t in session.scalars(query)}
            if missing:
                raise NotFound(f"unknown tenant {sorted(missing)[0]!r}")
        tenants = list(session.scalars(query))
        plans = []
        for tenant in tenants:
            if tenant.internal:  # the owner's own use: metered, never invoiced
                report.outcomes.append(TenantOutcome(tenant.tenant_id, period, "internal"))
                continue
            plan = _plan_tenant(session, tenant, period, cutoff)
            if plan is None:
                report.outcomes.append(TenantOutcome(tenant.tenant_id, period, "no contract"))
                continue
            plans.append(plan)
        requests = _usage_requests(plans, cutoff)
        leases: list[LeaseContract] = []
        preempted: dict[str, Preemption] = {}
        if requests:  # the ledger's leases over the requests' windows, and which of them the owner ended
            window = (min(r.start_ms for r in requests), max(r.end_ms for r in requests))
            asking = {r.tenant_id for r in requests}
            leases = leases_overlapping(session, *window, asking)
            preempted = preempted_leases(session, *window, asking)
    if progress:
        progress(f"aggregating usage for {len(plans)} tenants")
    results = aggregate(usage_root, requests, leases, engine=engine, apart=sorted(preempted)) if plans else {}
    for plan in plans:
        if progress:
            progress(plan.tenant.tenant_id)
        outcome = TenantOutcome(plan.tenant.tenant_id, period, "unchanged", currency=plan.tenant.currency)
        with ledger.transaction() as session:
            fresh = session.get(Tenant, plan.tenant.tenant_id)
            assert fresh is not None
            plan = replace(plan, tenant=fresh)
            invoice = _current_invoice(session, tenant.tenant_id, period)
            credits = [
                CreditGrant(b.credit_id, b.remaining, b.expires_ms, b.granted_ms)
                for b in credit_balances(session, tenant.tenant_id, exclude_invoice=invoice.id if invoice else None)
            ]
            draft, totals = _build_draft(session, plan, results, credits, preempted)
            if plan.issued is not None:
                # the period is issued: late usage waits for the tenant's next invoice; credit notes go now
                draft.consumptions = []
            _write_draft(session, actor, plan, cutoff, draft, totals, outcome)
        report.outcomes.append(outcome)
    report.flags += [
        f"tenant {o.tenant_id} has no contract in {period}: not rated"
        for o in report.outcomes
        if o.status == "no contract"
    ]
    return report


def _find_invoice(session: Session, ref: str | int, lock: bool = False) -> Invoice:
    query = select(Invoice)
    text = str(ref)
    query = query.where(Invoice.id == int(text)) if text.isdigit() else query.where(Invoice.number == text)
    if lock:
        query = query.with_for_update()
    invoice = session.scalar(query)
    if invoice is None:
        raise NotFound(f"no invoice {ref!r} (give its number, such as WM-000001, or its id)")
    return invoice


def finalize(ledger: Ledger, actor: str, ref: str | int) -> Invoice:
    """Issue a draft: take the next number, fix the content hash. An issued invoice never changes."""
    with ledger.transaction() as session:
        invoice = _find_invoice(session, ref, lock=True)
        if invoice.status != INVOICE_DRAFT:
            raise ImmutableInvoice(
                f"invoice {invoice.number or invoice.id} is {invoice.status}: it cannot be finalized"
            )
        for row in session.scalars(select(UsageConsumption).where(UsageConsumption.invoice_id == invoice.id)):
            mine = _range_of(row)
            for other in _ranges_taken(session, invoice.tenant_id, row.service_period, invoice.id):
                if overlaps(mine, other):
                    raise InvoicingError(
                        f"usage of {row.service_period} on draft {invoice.id} was counted elsewhere meanwhile: "
                        f"run the period {invoice.period} again, then finalize"
                    )
        invoice.number = _take_number(session, INVOICE_SEQUENCE)
        invoice.status = INVOICE_FINALIZED
        invoice.finalized_ms = now_ms()
        audit(
            session,
            actor,
            "invoice.finalize",
            "invoice",
            invoice.number,
            id=invoice.id,
            content_hash=invoice.content_hash,
            total=str(invoice.total),
        )
        session.flush()
        session.refresh(invoice)
        _ = invoice.lines
        return invoice


def finalize_period(ledger: Ledger, actor: str, period: str) -> list[Invoice]:
    with ledger.transaction() as session:
        ids = session.scalars(
            select(Invoice.id)
            .where(Invoice.period == period, Invoice.status == INVOICE_DRAFT)
            .order_by(Invoice.tenant_id)
        ).all()
    return [finalize(ledger, actor, invoice_id) for invoice_id in ids]


def void(ledger: Ledger, actor: str, ref: str | int, reason: str) -> Invoice:
    if not reason.strip():
        raise InvoicingError("voiding an invoice needs a reason (--reason)")
    with ledger.transaction() as session:
        invoice = _find_invoice(session, ref, lock=True)
        if invoice.status != INVOICE_FINALIZED:
            raise ImmutableInvoice(
                f"invoice {invoice.number or invoice.id} is {invoice.status}: only an issued invoice is voided "
                "(a draft is simply run again)"
            )
        invoice.status = INVOICE_VOID
        invoice.voided_ms = now_ms()
        invoice.void_reason = reason
        for row in session.scalars(select(UsageConsumption).where(UsageConsumption.invoice_id == invoice.id)):
            row.active = False
        audit(session, actor, "invoice.void", "invoice", str(invoice.number), reason=reason)
        return invoice


def list_invoices(
    session: Session, period: str | None = None, tenant_id: str | None = None, status: str | None = None
) -> list[Invoice]:
    query = select(Invoice).order_by(Invoice.period, Invoice.tenant_id, Invoice.id)
    if period:
        query = query.where(Invoice.period == period)
    if tenant_id:
        query = query.where(Invoice.tenant_id == tenant_id)
    if status:
        query = query.where(Invoice.status == status)
    return list(session.scalars(query))


def get_invoice(session: Session, ref: str | int) -> Invoice:
    invoice = _find_invoice(session, ref)
    _ = invoice.lines
    return invoice


def list_credit_notes(session: Session, tenant_id: str | None = None) -> list[CreditNote]:
    query = select(CreditNote).order_by(CreditNote.id)
    if tenant_id:
        query = query.where(CreditNote.tenant_id == tenant_id)
    return list(session.scalars(query))
