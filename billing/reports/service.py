"""Adapter: the fleet yield report from the billing database (the `usage_hourly` rollup, the
period's invoices, the rate cards) to the pure `billing.reports.yield_report`.

It reads aggregated rows only: the hourly rows of the window are summed in SQL per (model,
leased or idle, hour), so a month of 1,000 GPUs comes back as a few thousand sums, not
hundreds of thousands of rows; the invoices' lines come in one query.

    from billing.reports.service import yield_report
    report = yield_report(ledger, "2026-11")                       # UTC month, issued invoices
    report = yield_report(ledger, "2026-11", timezone="America/New_York", calendar_card="demo")
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from billing.common.errors import PeriodError
from billing.common.instants import ms_to_iso
from billing.common.periods import period_bounds, previous_periods
from billing.ledger.db import Ledger
from billing.ledger.models import (
    INVOICE_DRAFT,
    INVOICE_FINALIZED,
    AuditEntry,
    CapacityOffer,
    Contract,
    Invoice,
    InvoiceLineRow,
    Lease,
    RollupRun,
    Tenant,
    UsageHourly,
)
from billing.ledger.store import rate_card_versions, tariff_versions
from billing.pricing.tariffs import TariffSpan, tariff_spans
from billing.reports.errors import ReportError
from billing.reports.fleet_calendar import CalendarSpan, FleetCalendar, calendar_spans
from billing.reports.revenue import InvoiceRevenue, RevenueLine
from billing.reports.yield_report import (
    FleetUsage,
    HourTotal,
    OfferWindow,
    SoldLease,
    YieldReport,
    build_report,
)
from schemas.units import MS_PER_HOUR as HOUR_MS

DEFAULT_TIMEZONE = "UTC"
DEFAULT_VALLEY = ("valley",)


def fleet_window(period: str, timezone: str = DEFAULT_TIMEZONE) -> tuple[int, int]:
    """[start, end) of the fleet period: the month `period` in `timezone` (whole UTC hours)."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(
            f"time zone {timezone!r} is not an IANA zone name (such as UTC or Europe/Berlin)", subject="timezone"
        ) from None
    try:
        start, end = period_bounds(period, timezone)
    except PeriodError as exc:
        raise ReportError(str(exc), subject="period") from None
    if start % HOUR_MS or end % HOUR_MS:
        raise ReportError(
            f"the {period} month in {timezone} does not start on a whole UTC hour ({ms_to_iso(start)}): "
            "the report reads hourly rows; choose a zone with a whole-hour offset",
            subject="timezone",
        )
    return start, end


def next_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def choose_calendar(
    session: Session, start_ms: int, end_ms: int, card: str | None, valley_periods: Sequence[str]
) -> FleetCalendar | None:
    """The fleet calendar: rate card `card`, or else the card named by the most contracts in force in
    the window (ties: the name first in order); None when there is no contract at all."""
    chosen_by = "--calendar-card"
    if card is None:
        overlapping = (Contract.start_ms < end_ms) & ((Contract.end_ms.is_(None)) | (Contract.end_ms > start_ms))
        counted = session.execute(
            select(Contract.rate_card, func.count()).where(overlapping).group_by(Contract.rate_card)
        ).all()
        if not counted:
            return None
        total = sum(n for _, n in counted)
        card, most = min(counted, key=lambda row: (-row[1], row[0]))
        chosen_by = f"the card of most contracts in the period ({most} of {total})"
    versions = rate_card_versions(session, card)
    if not versions:
        raise ReportError(
            f"unknown rate card {card!r} for the fleet calendar (see: wattmeter-billing ratecards list)",
            subject="rate_card",
        )
    pieces = calendar_spans([(v.effective_from_ms, v.version, v.calendar) for v in versions], start_ms, end_ms)
    spans = tuple(CalendarSpan(lo, hi, calendar, f"{card} v{version}") for lo, hi, version, calendar in pieces)
    return FleetCalendar(card, spans, frozenset(valley_periods), chosen_by)


def fleet_usage(session: Session, start_ms: int, end_ms: int) -> FleetUsage:
    """The window's hourly rows summed per (model, leased, hour), and distinct GPUs, in SQL."""
    in_window = (UsageHourly.hour_start_ms >= start_ms) & (UsageHourly.hour_start_ms < end_ms)
    internal = select(Tenant.tenant_id).where(Tenant.internal.is_(True))
    # 0 idle, 1 rented, 2 the owner's own use (an internal tenant)
    leased = case((UsageHourly.tenant_id == "", 0), (UsageHourly.tenant_id.in_(internal), 2), else_=1)
    sums = session.execute(
        select(
            UsageHourly.model,
            leased,
            UsageHourly.hour_start_ms,
            func.sum(UsageHourly.allocated_gpu_ms),
            func.sum(UsageHourly.busy_gpu_ms),
            func.sum(UsageHourly.energy_mj),
        )
        .where(in_window)
        .group_by(UsageHourly.model, leased, UsageHourly.hour_start_ms)
    ).all()
    pairs = session.execute(select(UsageHourly.model, UsageHourly.gpu_uuid).where(in_window).distinct()).all()
    per_model: dict[str, set[str]] = {}
    for model, gpu in pairs:
        per_model.setdefault(str(model), set()).add(str(gpu))
    totals = tuple(
        HourTotal(
            str(model), use == 1, int(hour), int(allocated or 0), int(busy or 0), int(energy or 0), internal=use == 2
        )
        for model, use, hour, allocated, busy, energy in sums
    )
    fleet = set().union(*per_model.values()) if per_model else set()
    return FleetUsage(totals, {m: len(ids) for m, ids in sorted(per_model.items())}, len(fleet))


def offers_in(session: Session, start_ms: int, end_ms: int) -> tuple[list[OfferWindow], list[SoldLease]]:
    """The capacity offers overlapping the window, and the leases sold in them."""
    rows = list(
        session.scalars(
            select(CapacityOffer)
            .where(CapacityOffer.start_ms < end_ms, CapacityOffer.end_ms > start_ms)
            .order_by(CapacityOffer.offer_id)
        )
    )
    offers = [OfferWindow(row.offer_id, len(row.gpus), row.start_ms, row.end_ms) for row in rows]
    sold = [
        SoldLease(str(offer_id), int(start), None if end is None else int(end))
        for offer_id, start, end in session.execute(
            select(Lease.offer_id, Lease.start_ms, Lease.end_ms).where(Lease.offer_id.in_([o.offer_id for o in offers]))
        )
    ]
    return offers, sold


def period_invoices(session: Session, period: str, include_drafts: bool) -> list[InvoiceRevenue]:
    """The period's invoices (by their `period` label) that count as revenue, with their lines."""
    statuses = [INVOICE_FINALIZED, INVOICE_DRAFT] if include_drafts else [INVOICE_FINALIZED]
    invoices = session.execute(
        select(Invoice.id, Invoice.number, Invoice.tenant_id, Invoice.currency, Invoice.status, Invoice.subtotal)
        .where(Invoice.period == period, Invoice.status.in_(statuses))
        .order_by(Invoice.id)
    ).all()
    lines: dict[int, list[RevenueLine]] = {row.id: [] for row in invoices}
    for invoice_id, kind, model, amount, quantity, plan, tou in session.execute(
        select(
            InvoiceLineRow.invoice_id,
            InvoiceLineRow.kind,
            InvoiceLineRow.model,
            InvoiceLineRow.amount,
            InvoiceLineRow.quantity_base,
            InvoiceLineRow.plan,
            InvoiceLineRow.tou_period,
        )
        .join(Invoice, Invoice.id == InvoiceLineRow.invoice_id)
        .where(Invoice.period == period, Invoice.status.in_(statuses))
        .order_by(InvoiceLineRow.invoice_id, InvoiceLineRow.position)
    ):
        lines[invoice_id].append(
            RevenueLine(kind, model or "", amount, int(quantity or 0) if model else 0, plan or "", tou or "")
        )
    return [
        InvoiceRevenue(
            row.id,
            row.number or f"draft #{row.id}",
            row.tenant_id,
            row.currency,
            row.status,
            row.subtotal,
            tuple(lines[row.id]),
        )
        for row in invoices
    ]


def _coverage_notes(session: Session, period: str, start_ms: int, end_ms: int) -> list[str]:
    """Say which hours of the window no rollup has covered (the rollup of a period covers its hours
    in every tenant's zone; a UTC month can start in the previous period's)."""
    neighbours = [previous_periods(period, 1)[0], period, next_period(period)]
    runs = {run.period: run for run in session.scalars(select(RollupRun).where(RollupRun.period.in_(neighbours)))}
    if period not in runs:
        return [f"usage of {period} was never rolled up: run `wattmeter-billing rollup --period {period}`"]
    zones = sorted(set(session.scalars(select(Tenant.timezone))) or {"UTC"})

    def span(label: str) -> tuple[int, int]:  # as billing.readmodel.hourly.period_span, in this transaction
        bounds = [period_bounds(label, zone) for zone in zones]
        lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
        return lo - lo % HOUR_MS, hi + (-hi % HOUR_MS)

    covered = sorted(span(label) for label in runs)
    missing: list[tuple[int, int]] = []
    cursor = start_ms
    for lo, hi in covered:
        if lo > cursor:
            missing.append((cursor, min(lo, end_ms)))
        cursor = max(cursor, hi)
    if cursor < end_ms:
        missing.append((cursor, end_ms))
    notes = []
    for lo, hi in missing:
        if lo >= hi:
            continue
        label = neighbours[0] if lo < span(period)[0] else neighbours[2]
        notes.append(
            f"hours {ms_to_iso(lo)}..{ms_to_iso(hi)} of the window are not rolled up: "
            f"run `wattmeter-billing rollup --period {label}`"
        )
    return notes


def yield_report(
    ledger: Ledger,
    period: str,
    *,
    timezone: str = DEFAULT_TIMEZONE,
    calendar_card: str | None = None,
    valley_periods: Sequence[str] = DEFAULT_VALLEY,
    include_drafts: bool = False,
    tariff: str | None = None,
) -> YieldReport:
    """The fleet yield report of `period` (a month in `timezone`); revenue from the invoices labelled
    `period` (issued; drafts too with include_drafts). Bad input raises ReportError."""
    start, end = fleet_window(period, timezone)
    with ledger.transaction() as session:
        calendar = choose_calendar(session, start, end, calendar_card, valley_periods or DEFAULT_VALLEY)
        usage = fleet_usage(session, start, end)
        invoices = period_invoices(session, period, include_drafts)
        offers, sold = offers_in(session, start, end)
        notes: list[str] = []
        tariffs = _tariffs(session, tariff, start, end, notes)
        notes += _coverage_notes(session, period, start, end)
        if not include_drafts:
            drafts = session.scalar(
                select(func.count())
                .select_from(Invoice)
                .where(Invoice.period == period, Invoice.status == INVOICE_DRAFT)
            )
            if drafts:
                notes.append(f"{drafts} draft invoice(s) of {period} are not counted as revenue until finalized")
    if calendar is None:
        notes.append("no contract names a rate card: no valley calendar (give one with --calendar-card)")
    return build_report(
        period=period,
        timezone=timezone,
        start_ms=start,
        end_ms=end,
        usage=usage,
        invoices=invoices,
        calendar=calendar,
        basis="issued and draft" if include_drafts else "issued",
        notes=notes,
        offers=offers,
        sold=sold,
        tariffs=tariffs,
    )


def _tariffs(session: Session, name: str | None, start: int, end: int, notes: list[str]) -> list[TariffSpan]:
    """The utility tariff's versions over the window: the one named, or the only one there is."""
    versions = tariff_versions(session, name)
    if name is not None and not versions:
        raise ReportError(
            f"no utility tariff {name!r} (load one with `wattmeter-billing tariffs load`)", subject="tariff"
        )
    names = sorted({t.name for t in versions})
    if len(names) > 1:
        notes.append(
            f"{len(names)} utility tariffs are loaded ({', '.join(names)}): name one with --tariff for margins"
        )
        return []
    spans = tariff_spans(versions, start, end)
    if versions and not spans:
        notes.append(f"the utility tariff {names[0]} takes effect after {ms_to_iso(end)}: no energy cost")
    return spans


class YieldCache:
    """Reports kept per (database, arguments) while the facts they were built from are unchanged: the
    rollup runs of the period and its neighbours (a rebuild stamps its run in the same transaction
    as its rows) and the newest audit entry (invoices are run, finalized and voided with one). A
    month of 1,000 GPUs sums ~720,000 hourly rows (seconds on SQLite); the page asks again for free."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.builds = 0
        self._entries: dict[tuple[Any, ...], tuple[Any, YieldReport]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def fingerprint(ledger: Ledger, period: str) -> tuple[Any, ...]:
        try:
            neighbours = [previous_periods(period, 1)[0], period, next_period(period)]
        except PeriodError as exc:
            raise ReportError(str(exc), subject="period") from None
        with ledger.transaction() as session:
            runs = session.execute(
                select(RollupRun.period, RollupRun.built_ms, RollupRun.rows).where(RollupRun.period.in_(neighbours))
            ).all()
            audit = session.scalar(select(func.max(AuditEntry.id)))
        return (tuple(sorted(tuple(run) for run in runs)), audit)

    def get(self, ledger: Ledger, period: str, **options: Any) -> YieldReport:
        key = (str(ledger.engine.url), period, tuple(sorted((k, str(v)) for k, v in options.items())))
        fingerprint = self.fingerprint(ledger, period)
        with self._lock:
            held = self._entries.get(key)
            if held is not None and held[0] == fingerprint:
                return held[1]
            report = yield_report(ledger, period, **options)
            self.builds += 1
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (fingerprint, report)
            return report


CACHE = YieldCache()
