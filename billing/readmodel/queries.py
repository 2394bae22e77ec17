"""The read model of the web: what the JSON API, the tenant portal and the statements show, read from
the hourly rollup (`usage_hourly`) and the ledger. Never the minute Parquet on a request.

Every function takes the caller's SQLAlchemy `Session` and returns typed, frozen dataclasses:
quantities are integers (GPU time and busy time in ms, energy in mJ, exactly as metered), money is
`Decimal` (as the ledger holds it). `gpu_hours`, `kwh` and `utilization` turn them into display
numbers; `billing.statements.formatting` formats those for a locale.

Scoping is NOT done here: these functions answer for the tenant they are given. The caller (an API
endpoint, a portal page) first asks `billing.web.auth.scope_tenant` which tenant a key may read, and
`check_owner` for an object fetched by number or id (`invoice_detail(..., owner_check=...)` calls it
before reading anything else of the invoice).

Time:

- A bucket of `tenant_usage` is a day or an hour in the TENANT's time zone (`Tenant.timezone`): a
  day runs from local midnight to local midnight (23 or 25 hours on a DST day), an hour is one UTC
  hour, labelled with its local wall-clock time and UTC offset.
- The rollup's rows are whole UTC hours, and each counts in the bucket and the time-of-use period in
  which it STARTS. Every real time zone with a whole-hour offset (and every rate card calendar in
  one) has its days and its period boundaries on UTC hours, so there this is exact; in a zone with a
  half-hour offset (Asia/Kolkata) an hour that straddles local midnight or a period boundary counts
  whole in the one it starts in (the invoice itself is exact to the minute, from the Parquet).
- The time-of-use period of an hour comes from the rate card version in force for the tenant then
  (its contracts, cut at card version changes, each card's own calendar). An hour no contract
  covers is `UNPRICED`.

Scale: each query is one range read of the index `ix_usage_hourly_tenant_hour` (tenant, hour) over
the window asked. Day buckets, time-of-use periods and invoice segments are computed by the
database: the hour is mapped to its piece of the window by a balanced `CASE` over the pieces'
boundaries (a binary search, about log2(pieces) comparisons per row), so what comes back is one row
per (piece[, GPU]), not one per hour. A tenant's month with a year of history for 1,000 GPUs reads
only that month's rows.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from billing.common.periods import period_bounds
from billing.ledger.lines import line_from_row
from billing.ledger.models import (
    INVOICE_DRAFT,
    Contract,
    CreditNote,
    Invoice,
    RateCard,
    RollupRun,
    StripeInvoiceSync,
    Tenant,
)
from billing.pricing.lines import InvoiceLine
from billing.pricing.ratecards import RateCardVersion
from billing.pricing.segments import card_spans as versions_to_spans
from billing.readmodel.errors import NotFound
from schemas.leases import PLANS
from schemas.units import MJ_PER_KWH, MS_PER_HOUR

UNPRICED = "unpriced"  # the time-of-use period of an hour that no contract covers
HOUR_MS = MS_PER_HOUR
DISPLAY_PLACES = 6  # GPU-hours and kWh, as on the invoice lines
Grain = Literal["day", "hour"]
GRAINS: tuple[str, ...] = ("day", "hour")
OwnerCheck = Callable[[str], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- display helpers ------------------------------------------------------------------------------


def ratio(numerator: int, denominator: int, places: int) -> Decimal:
    """numerator / denominator rounded to `places` decimal places, half to even, exactly (integers only:
    the same result as `billing.pricing.money.round_half_even(Fraction(n, d), places)`, faster)."""
    if denominator <= 0:
        raise ValueError(f"ratio: the denominator must be positive, not {denominator}")
    quotient, remainder = divmod(numerator * 10**places, denominator)  # floor division, remainder >= 0
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2 == 1):
        quotient += 1
    return Decimal(quotient).scaleb(-places)


def gpu_hours(ms: int) -> Decimal:
    """GPU time in ms -> GPU-hours, 6 places, half to even (as the invoice lines round them)."""
    return ratio(ms, MS_PER_HOUR, DISPLAY_PLACES)


def kwh(mj: int) -> Decimal:
    """Energy in mJ -> kWh (metered, before any PUE), 6 places, half to even."""
    return ratio(mj, MJ_PER_KWH, DISPLAY_PLACES)


def utilization(busy_ms: int, allocated_ms: int) -> Decimal | None:
    """Busy over allocated GPU time as a fraction 0..1 (4 places); None when nothing was allocated."""
    if allocated_ms <= 0:
        return None
    return ratio(busy_ms, allocated_ms, 4)


def ms_to_local(ts_ms: int, zone: str) -> datetime:
    """An instant (ms since the epoch) as an aware datetime in `zone`."""
    return (_EPOCH + timedelta(milliseconds=ts_ms)).astimezone(ZoneInfo(zone))


# -- result types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measures:
    """Exact quantities: GPU time allocated and busy (ms), energy (mJ), and how many usage records."""

    allocated_gpu_ms: int = 0
    busy_gpu_ms: int = 0
    energy_mj: int = 0
    records: int = 0

    def __add__(self, other: Measures) -> Measures:
        return Measures(
            self.allocated_gpu_ms + other.allocated_gpu_ms,
            self.busy_gpu_ms + other.busy_gpu_ms,
            self.energy_mj + other.energy_mj,
            self.records + other.records,
        )

    @property
    def gpu_hours(self) -> Decimal:
        return gpu_hours(self.allocated_gpu_ms)

    @property
    def busy_gpu_hours(self) -> Decimal:
        return gpu_hours(self.busy_gpu_ms)

    @property
    def kwh(self) -> Decimal:
        return kwh(self.energy_mj)

    @property
    def utilization(self) -> Decimal | None:
        return utilization(self.busy_gpu_ms, self.allocated_gpu_ms)

    def measure(self, name: str) -> int:
        """One quantity by its column name: allocated_gpu_ms, busy_gpu_ms, energy_mj or records."""
        value: int = getattr(self, name)
        return value


ZERO = Measures()


def _sum(values: Iterable[Measures]) -> Measures:
    total = ZERO
    for value in values:
        total = total + value
    return total


@dataclass(frozen=True)
class UsageBucket:
    """One day or hour of a tenant's usage (in the tenant's time zone), optionally of one GPU.

    `start_ms`/`end_ms` are the bucket's instants, clipped to the window asked; `label` is its
    local date ("2026-11-03") or local hour with offset ("2026-11-01T01:00-04:00"). `periods` splits
    `total` by time-of-use period (the card's names, such as "peak" and "valley"; `UNPRICED` where no
    contract covers): only periods with usage appear, and the values sum to `total` exactly.
    """

    start_ms: int
    end_ms: int
    label: str
    total: Measures
    periods: dict[str, Measures] = field(default_factory=dict)
    gpu_uuid: str | None = None
    model: str | None = None

    def period(self, name: str) -> Measures:
        """The usage in one time-of-use period (zero when none)."""
        return self.periods.get(name, ZERO)


@dataclass(frozen=True)
class GpuRow:
    """One GPU's usage by a tenant over a window: totals and their split by time-of-use period."""

    gpu_uuid: str
    model: str
    total: Measures
    periods: dict[str, Measures] = field(default_factory=dict)

    def period(self, name: str) -> Measures:
        return self.periods.get(name, ZERO)

    @property
    def gpu_hours(self) -> Decimal:
        return self.total.gpu_hours

    @property
    def busy_gpu_hours(self) -> Decimal:
        return self.total.busy_gpu_hours

    @property
    def utilization(self) -> Decimal | None:
        return self.total.utilization

    @property
    def kwh(self) -> Decimal:
        return self.total.kwh


@dataclass(frozen=True)
class InvoiceSummary:
    """An invoice's header, as listed. `payment_status` is what Stripe last reported (None: not pushed)."""

    id: int
    number: str | None
    tenant_id: str
    period: str
    period_start_ms: int
    period_end_ms: int
    status: str  # draft | finalized | void
    currency: str
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    credits_applied: Decimal
    amount_due: Decimal
    finalized_ms: int | None
    voided_ms: int | None
    payment_status: str | None

    @property
    def reference(self) -> str:
        """What names it in a URL: its number once issued, else its id."""
        return self.number or str(self.id)


@dataclass(frozen=True)
class GpuUsage:
    """The usage of one GPU (and plan) behind an invoice line."""

    gpu_uuid: str
    model: str
    plan: str
    measures: Measures


@dataclass(frozen=True)
class LineUsage:
    """The rolled-up usage behind one invoice line: the tenant's hours in the line's segments, of its
    plan and model (energy lines: every plan and model), per GPU.

    `measure` is the quantity the line prices (allocated_gpu_ms or energy_mj). `matches_quantity` is
    True when that measure's total equals the line's `quantity_base`: it is not, for a tier of a tiered
    price (each tier shows the whole key's usage), for usage that arrived after the invoice was issued
    (a later correction line carries it), or where a period boundary is not on a UTC hour.
    """

    measure: str
    total: Measures
    by_gpu: list[GpuUsage]
    matches_quantity: bool

    @property
    def quantity(self) -> int:
        return self.total.measure(self.measure)


@dataclass(frozen=True)
class LineDetail:
    """One invoice line as stored, with the usage behind it (None for money-only lines: tax,
    discount, true-up, credit, and the per-lease rounding uplift). It reads as its line
    (`detail.amount` is `detail.line.amount`), so templates need not know the wrapper."""

    line: InvoiceLine
    usage: LineUsage | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.line, name)


@dataclass(frozen=True)
class CreditNoteSummary:
    number: str
    currency: str
    amount: Decimal
    reason: str
    created_ms: int


@dataclass(frozen=True)
class InvoiceDetail:
    """An invoice: header, tenant (name, time zone), lines with the usage behind each, credit notes."""

    invoice: InvoiceSummary
    tenant_name: str
    tenant_timezone: str
    lines: list[LineDetail]
    credit_notes: list[CreditNoteSummary]


# -- time-of-use ----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _parsed_card(content_hash: str, body_key: str) -> RateCardVersion:
    """A rate card version parsed once per process (a version never changes; keyed by its content)."""
    return RateCardVersion.from_dict(json.loads(body_key))


def _card_versions(session: Session, name: str) -> list[RateCardVersion]:
    rows = session.execute(
        select(RateCard.id, RateCard.content_hash, RateCard.body)
        .where(RateCard.name == name)
        .order_by(RateCard.effective_from_ms)
    ).all()
    return [_parsed_card(row.content_hash, json.dumps(row.body, sort_keys=True)) for row in rows]


def tou_pieces(session: Session, tenant_id: str, start_ms: int, end_ms: int) -> list[tuple[int, int, str]]:
    """[start, end) of each time-of-use period in force for a tenant over [start_ms, end_ms), tiling it.

    From the tenant's contracts, each cut at its rate card's version changes
    (`billing.pricing.segments.card_spans`, as the invoices are) and by each version's calendar.
    Time no contract (or no card version yet in effect) covers is `UNPRICED`: unlike rating, a gap
    is shown, not refused. Neighbours may share a period name (a card change inside a valley).
    """
    if end_ms <= start_ms:
        return []
    contracts = session.scalars(
        select(Contract)
        .where(Contract.tenant_id == tenant_id, Contract.start_ms < end_ms)
        .where(or_(Contract.end_ms.is_(None), Contract.end_ms > start_ms))
        .order_by(Contract.start_ms)
    ).all()
    priced: list[tuple[int, int, str]] = []
    versions_by_card: dict[str, list[RateCardVersion]] = {}
    for contract in contracts:
        if contract.rate_card not in versions_by_card:
            versions_by_card[contract.rate_card] = _card_versions(session, contract.rate_card)
        versions = versions_by_card[contract.rate_card]
        if not versions:
            continue
        lo = max(start_ms, contract.start_ms, min(v.effective_from_ms for v in versions))
        hi = min(end_ms, contract.end_ms if contract.end_ms is not None else end_ms)
        if lo >= hi:
            continue
        for span in versions_to_spans(versions, lo, hi):
            priced += [
                (s.start_ms, s.end_ms, s.period) for s in span.card.calendar.segments(span.start_ms, span.end_ms)
            ]
    out: list[tuple[int, int, str]] = []
    cursor = start_ms
    for lo, hi, period in sorted(priced):
        lo = max(lo, cursor)
        if lo >= hi:
            continue
        if lo > cursor:
            out.append((cursor, lo, UNPRICED))
        out.append((lo, hi, period))
        cursor = hi
    if cursor < end_ms:
        out.append((cursor, end_ms, UNPRICED))
    return out


# -- the window's pieces, mapped by the database --------------------------------------------------


def _bucket_case(column: str, boundaries: Sequence[int], codes: Sequence[int] | None = None) -> str:
    """SQL: the index i of the piece [boundaries[i], boundaries[i+1]) that `column` falls in (or
    codes[i]), as a balanced CASE (a binary search). Values below the first boundary give the first
    piece, at or above the last the last piece: the caller's WHERE keeps the column inside."""
    pieces = len(boundaries) - 1

    def node(lo: int, hi: int) -> str:
        if hi - lo <= 1:
            return str(int(codes[lo]) if codes is not None else lo)
        mid = (lo + hi) // 2
        return f"CASE WHEN {column} < {int(boundaries[mid])} THEN {node(lo, mid)} ELSE {node(mid, hi)} END"

    return node(0, max(pieces, 1))


def _merged(boundaries: Sequence[int], codes: Sequence[int]) -> tuple[list[int], list[int]]:
    """Neighbouring pieces with the same code joined: fewer boundaries for the CASE to search."""
    out_bounds: list[int] = [boundaries[0]]
    out_codes: list[int] = []
    for index, code in enumerate(codes):
        if out_codes and out_codes[-1] == code:
            out_bounds[-1] = boundaries[index + 1]
        else:
            out_codes.append(code)
            out_bounds.append(boundaries[index + 1])
    return out_bounds, out_codes


def _boundaries(*cuts: Iterable[int], start_ms: int, end_ms: int) -> list[int]:
    """Sorted distinct instants cutting [start_ms, end_ms), the ends included."""
    inside = {c for values in cuts for c in values if start_ms < c < end_ms}
    return [start_ms, *sorted(inside), end_ms]


def _hour_floor(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS


def _measures(row: Any, offset: int) -> Measures:
    return Measures(int(row[offset]), int(row[offset + 1]), int(row[offset + 2]), int(row[offset + 3]))


_SUMS = "sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(energy_mj), sum(records)"


def _pieces_query(
    session: Session,
    tenant_id: str,
    start_ms: int,
    end_ms: int,
    boundaries: Sequence[int],
    keys: Sequence[str] = (),
    codes: Sequence[int] | None = None,
) -> list[Any]:
    """(code, *keys, allocated, busy, energy, records) summed per code of the window's pieces (and keys).

    A piece [boundaries[i], boundaries[i+1]) has the code codes[i] (default: i); pieces that share a
    code are summed together, so the database returns one row per (code, keys). One index range read
    of (tenant_id, hour_start_ms) over the hours starting in [start_ms, end_ms)."""
    if codes is None:
        codes = range(len(boundaries) - 1)
    bounds, merged = _merged(boundaries, codes)
    piece = _bucket_case("hour_start_ms", bounds, merged)
    cols = "".join(f", {k}" for k in keys)
    sql = (
        f"SELECT piece{cols}, {_SUMS} FROM (SELECT {piece} AS piece{cols}, allocated_gpu_ms, busy_gpu_ms, "
        "energy_mj, records FROM usage_hourly WHERE tenant_id = :tenant AND hour_start_ms >= :start "
        f"AND hour_start_ms < :end) AS hourly GROUP BY piece{cols}"
    )
    return list(session.execute(text(sql), {"tenant": tenant_id, "start": start_ms, "end": end_ms}))


def _gpu_pieces_query(
    session: Session, tenant_id: str, start_ms: int, end_ms: int, boundaries: Sequence[int], codes: Sequence[int]
) -> list[Any]:
    """As `_pieces_query(..., keys=("gpu_uuid", "model", "plan"), codes)`, the same rows, but grouped on
    (GPU, one integer) only: the plan is folded into the integer and the model taken as the GPU's
    (a GPU has one model), which spares the database a sort on three strings (a third of the time).
    If a plan outside `schemas.leases.PLANS` shows up, or a GPU with two models, it asks again the
    plain way, so the answer is exact whatever the rows."""
    if codes is None or not len(codes):
        return []
    bounds, merged = _merged(boundaries, codes)
    piece = _bucket_case("hour_start_ms", bounds, merged)
    plans = len(PLANS) + 1
    plan_code = "CASE plan " + " ".join(f"WHEN '{p}' THEN {i}" for i, p in enumerate(PLANS)) + f" ELSE {plans - 1} END"
    sql = (
        f"SELECT gpu_uuid, ({piece}) * {plans} + {plan_code} AS k, min(model), max(model), {_SUMS} "
        "FROM usage_hourly WHERE tenant_id = :tenant AND hour_start_ms >= :start AND hour_start_ms < :end "
        "GROUP BY gpu_uuid, k"
    )
    rows = list(session.execute(text(sql), {"tenant": tenant_id, "start": start_ms, "end": end_ms}))
    if any(row[2] != row[3] or int(row[1]) % plans == plans - 1 for row in rows):
        return _pieces_query(session, tenant_id, start_ms, end_ms, boundaries, ("gpu_uuid", "model", "plan"), codes)
    return [(int(row[1]) // plans, row[0], row[2], PLANS[int(row[1]) % plans], *row[4:]) for row in rows]


def _hours_query(session: Session, tenant_id: str, start_ms: int, end_ms: int) -> list[Any]:
    """(hour_start_ms, allocated, busy, energy, records) per hour of [start_ms, end_ms): a streaming
    aggregate over the index (tenant_id, hour_start_ms), with no sort."""
    sql = (
        f"SELECT hour_start_ms, {_SUMS} FROM usage_hourly WHERE tenant_id = :tenant AND hour_start_ms >= :start "
        "AND hour_start_ms < :end GROUP BY hour_start_ms ORDER BY hour_start_ms"
    )
    return list(session.execute(text(sql), {"tenant": tenant_id, "start": start_ms, "end": end_ms}))


# -- tenants and windows --------------------------------------------------------------------------


def as_of_ms(session: Session, period: str | None = None) -> int | None:
    """How fresh the hourly rows are: when the rollup follower (`rollup --follow`) last caught up, or
    when `period` was last rebuilt whole, whichever is later; None when neither ever ran."""
    labels = ["follow"] if period is None else ["follow", period]
    built = session.scalars(select(RollupRun.built_ms).where(RollupRun.period.in_(labels))).all()
    return max(built) if built else None


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    """The tenant, or auth's NotFound("not found") (the same answer as for another tenant's object)."""
    if not tenant_id or len(tenant_id) > 128 or not tenant_id.isprintable():
        raise NotFound("not found")  # no id the ledger could hold: never sent to the database
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("not found")
    return tenant


def period_window(session: Session, tenant_id: str, period: str) -> tuple[int, int]:
    """[start_ms, end_ms) of the month `period` ("2026-11") in the tenant's time zone.

    Raises `billing.invoicing.errors.InvoicingError` for a period that does not parse, NotFound for
    an unknown tenant."""
    return period_bounds(period, get_tenant(session, tenant_id).timezone)


# -- usage ----------------------------------------------------------------------------------------


def _local_days(zone: ZoneInfo, start_ms: int, end_ms: int) -> list[tuple[int, date]]:
    """The local midnights inside (start_ms, end_ms) with the date each starts, after the first day's."""
    first = ms_to_local(start_ms, zone.key).date()
    out: list[tuple[int, date]] = []
    day = first + timedelta(days=1)
    while True:
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)
        if midnight >= end_ms:
            return out
        out.append((midnight, day))
        day += timedelta(days=1)


def _hour_label(ts_ms: int, zone: str) -> str:
    return ms_to_local(ts_ms, zone).isoformat(timespec="minutes")


def tenant_usage(
    session: Session,
    tenant_id: str,
    start_ms: int,
    end_ms: int,
    grain: Grain = "day",
    by_gpu: bool = False,
) -> list[UsageBucket]:
    """A tenant's usage over [start_ms, end_ms) by day or hour of its own time zone, split by
    time-of-use period; with `by_gpu`, one bucket per (day or hour, GPU) that has usage.

    Without `by_gpu` every day (or hour) of the window is listed, with zeros where nothing was
    used, so a chart has no holes. The buckets' totals sum exactly to the rollup's rows of the hours
    starting in the window (see the module docstring on hours and time zones).
    """
    if grain not in GRAINS:
        raise ValueError(f"grain must be day or hour, not {grain!r}")
    tenant = get_tenant(session, tenant_id)
    zone = ZoneInfo(tenant.timezone)
    if end_ms <= start_ms:
        return []
    tou = tou_pieces(session, tenant_id, _hour_floor(start_ms), end_ms)
    if grain == "day":
        days = _local_days(zone, start_ms, end_ms)
        bucket_starts = [start_ms, *(midnight for midnight, _ in days)]
        labels = [ms_to_local(start_ms, tenant.timezone).date().isoformat(), *(d.isoformat() for _, d in days)]
    else:
        bucket_starts = [start_ms, *range(_hour_floor(start_ms) + HOUR_MS, end_ms, HOUR_MS)]
        labels = [_hour_label(s, tenant.timezone) for s in bucket_starts]
    bucket_ends = [*bucket_starts[1:], end_ms]
    bounds = _boundaries(bucket_starts, (lo for lo, _, _ in tou), start_ms=start_ms, end_ms=end_ms)
    # each piece lies in one bucket and one time-of-use period
    piece_bucket = [bisect_right(bucket_starts, b) - 1 for b in bounds[:-1]]
    tou_starts = [lo for lo, _, _ in tou]
    piece_period = [tou[max(bisect_right(tou_starts, b) - 1, 0)][2] if tou else UNPRICED for b in bounds[:-1]]
    names = sorted(set(piece_period))
    # a piece's code: its (bucket, period); the database sums the pieces of one code together
    codes = [piece_bucket[i] * len(names) + names.index(piece_period[i]) for i in range(len(piece_period))]
    keys = ("gpu_uuid", "model") if by_gpu else ()
    if by_gpu:
        rows = _pieces_query(session, tenant_id, start_ms, end_ms, bounds, keys, codes)
    else:  # grouped by hour in the index's own order (no sort), each hour then given its code here
        hourly = _hours_query(session, tenant_id, start_ms, end_ms)
        rows = [(codes[bisect_right(bounds, row[0]) - 1], *row[1:]) for row in hourly]

    acc: dict[tuple[int, str, str], dict[str, Measures]] = {}
    for row in rows:
        bucket, period = divmod(int(row[0]), len(names))
        gpu, model = (str(row[1]), str(row[2])) if by_gpu else ("", "")
        periods = acc.setdefault((bucket, gpu, model), {})
        name = names[period]
        periods[name] = periods.get(name, ZERO) + _measures(row, 1 + len(keys))
    if not by_gpu:
        for bucket in range(len(bucket_starts)):
            acc.setdefault((bucket, "", ""), {})
    out = []
    for (bucket, gpu, model), periods in sorted(acc.items()):
        out.append(
            UsageBucket(
                start_ms=bucket_starts[bucket],
                end_ms=bucket_ends[bucket],
                label=labels[bucket],
                total=_sum(periods.values()),
                periods=dict(sorted(periods.items())),
                gpu_uuid=gpu if by_gpu else None,
                model=model if by_gpu else None,
            )
        )
    return out


def usage_total(buckets: Iterable[UsageBucket]) -> UsageBucket:
    """The buckets summed into one (label "total"): what a chart's legend or a statement's total shows."""
    items = list(buckets)
    periods: dict[str, Measures] = {}
    for bucket in items:
        for name, value in bucket.periods.items():
            periods[name] = periods.get(name, ZERO) + value
    return UsageBucket(
        start_ms=min((b.start_ms for b in items), default=0),
        end_ms=max((b.end_ms for b in items), default=0),
        label="total",
        total=_sum(b.total for b in items),
        periods=dict(sorted(periods.items())),
    )


def gpu_table(session: Session, tenant_id: str, start_ms: int, end_ms: int) -> list[GpuRow]:
    """A tenant's usage over [start_ms, end_ms) per GPU (and model), split by time-of-use period,
    sorted by GPU. GPU-hours, busy GPU-hours, utilization and kWh are properties of each row."""
    get_tenant(session, tenant_id)
    if end_ms <= start_ms:
        return []
    tou = tou_pieces(session, tenant_id, _hour_floor(start_ms), end_ms)
    bounds = _boundaries((lo for lo, _, _ in tou), start_ms=start_ms, end_ms=end_ms)
    tou_starts = [lo for lo, _, _ in tou]
    piece_period = [tou[max(bisect_right(tou_starts, b) - 1, 0)][2] if tou else UNPRICED for b in bounds[:-1]]
    names = sorted(set(piece_period))
    codes = [names.index(name) for name in piece_period]
    rows = _pieces_query(session, tenant_id, start_ms, end_ms, bounds, ("gpu_uuid", "model"), codes)
    acc: dict[tuple[str, str], dict[str, Measures]] = {}
    for row in rows:
        periods = acc.setdefault((str(row[1]), str(row[2])), {})
        name = names[int(row[0])]
        periods[name] = periods.get(name, ZERO) + _measures(row, 3)
    return [
        GpuRow(gpu, model, _sum(periods.values()), dict(sorted(periods.items())))
        for (gpu, model), periods in sorted(acc.items())
    ]


# -- invoices -------------------------------------------------------------------------------------


def _summary(invoice: Invoice, payment_status: str | None) -> InvoiceSummary:
    return InvoiceSummary(
        id=invoice.id,
        number=invoice.number,
        tenant_id=invoice.tenant_id,
        period=invoice.period,
        period_start_ms=invoice.period_start_ms,
        period_end_ms=invoice.period_end_ms,
        status=invoice.status,
        currency=invoice.currency,
        subtotal=invoice.subtotal,
        tax=invoice.tax,
        total=invoice.total,
        credits_applied=invoice.credits_applied,
        amount_due=invoice.amount_due,
        finalized_ms=invoice.finalized_ms,
        voided_ms=invoice.voided_ms,
        payment_status=payment_status,
    )


def tenant_invoices(
    session: Session,
    tenant_id: str | None,
    *,
    period: str | None = None,
    status: str | None = None,
    include_drafts: bool = True,
) -> list[InvoiceSummary]:
    """Invoices of one tenant (None: every tenant), by period, tenant and id; optionally one period's
    or one status's. `include_drafts=False` leaves drafts out (what a tenant key is shown: a draft
    changes until finance finalizes it)."""
    query = (
        select(Invoice, StripeInvoiceSync.payment_status)
        .outerjoin(StripeInvoiceSync, StripeInvoiceSync.invoice_id == Invoice.id)
        .order_by(Invoice.period, Invoice.tenant_id, Invoice.id)
    )
    if tenant_id is not None:
        query = query.where(Invoice.tenant_id == tenant_id)
    if period is not None:
        query = query.where(Invoice.period == period)
    if status is not None:
        query = query.where(Invoice.status == status)
    if not include_drafts:
        query = query.where(Invoice.status != INVOICE_DRAFT)
    return [_summary(invoice, payment) for invoice, payment in session.execute(query)]


def find_invoice(
    session: Session, reference: str | int, owner_check: OwnerCheck | None = None, include_drafts: bool = True
) -> Invoice:
    """An invoice by number ("WM-000001") or id ("17"), or auth's NotFound("not found") when there is
    none, when `owner_check(tenant_id)` refuses it, or when it is a draft and `include_drafts` is
    False: one answer for all three, so a tampered reference learns nothing."""
    ref = str(reference).strip()
    if not ref or len(ref) > 64 or not ref.isprintable() or not ref.isascii():
        raise NotFound("not found")  # numbers are ASCII; nothing else reaches the database
    if ref.isdigit():
        if len(ref) > 18:
            raise NotFound("not found")
        invoice = session.get(Invoice, int(ref))
    else:
        invoice = session.scalar(select(Invoice).where(Invoice.number == ref))
    if invoice is None or (not include_drafts and invoice.status == INVOICE_DRAFT):
        raise NotFound("not found")
    if owner_check is not None:
        owner_check(invoice.tenant_id)
    return invoice


@dataclass(frozen=True)
class _Wanted:
    position: int
    kind: str
    plan: str
    model: str
    quantity_base: int
    measure: str
    segments: tuple[tuple[int, int], ...]
    window: tuple[int, int]


def _wanted_lines(lines: Sequence[Any]) -> list[_Wanted]:
    """The usage lines (gpu_time, energy) whose usage_query names a measure and segments."""
    out = []
    for line in lines:
        query = line.usage_query or {}
        measure = query.get("measure") or ""
        segments = tuple((int(a), int(b)) for a, b in query.get("segments") or [])
        if line.kind in ("gpu_time", "energy") and measure in ("allocated_gpu_ms", "energy_mj") and segments:
            out.append(
                _Wanted(
                    line.position,
                    line.kind,
                    line.plan,
                    line.model,
                    line.quantity_base,
                    measure,
                    segments,
                    (line.service_start_ms, line.service_end_ms),
                )
            )
    return out


def _line_usage(session: Session, tenant_id: str, lines: Sequence[Any]) -> dict[int, LineUsage]:
    """The usage behind each usage line (gpu_time, energy), by position: one grouped read per distinct
    service window (normally one), cut into pieces at every segment boundary of every line; each piece
    then goes to the lines whose segments hold it (gpu_time: of the row's model and plan)."""
    wanted = _wanted_lines(lines)
    windows: dict[tuple[int, int], list[_Wanted]] = {}
    for item in wanted:
        windows.setdefault(item.window, []).append(item)
    out: dict[int, LineUsage] = {}
    for (lo, hi), items in windows.items():
        start = min(lo, *(a for item in items for a, _ in item.segments))
        end = max(hi, *(b for item in items for _, b in item.segments))
        bounds = _boundaries((x for item in items for ab in item.segments for x in ab), start_ms=start, end_ms=end)
        # each piece's class: the set of lines whose segments hold it (the database sums per class)
        holding: list[set[int]] = [set() for _ in bounds[:-1]]
        for index, item in enumerate(items):
            for a, b in item.segments:
                for piece in range(bisect_right(bounds, a) - 1, bisect_right(bounds, b) - 1):
                    holding[piece].add(index)
        classes: dict[frozenset[int], int] = {}
        codes = [classes.setdefault(frozenset(held), len(classes)) for held in holding]
        # class -> the lines holding it: energy lines for every row, gpu_time lines by (model, plan)
        energy: dict[int, list[int]] = {}
        gpu_time: dict[tuple[int, str, str], list[int]] = {}
        for held, code in classes.items():
            for index in sorted(held):
                item = items[index]
                if item.kind == "energy":
                    energy.setdefault(code, []).append(index)
                else:
                    gpu_time.setdefault((code, item.model, item.plan), []).append(index)
        per_line: list[dict[tuple[str, str, str], Measures]] = [{} for _ in items]
        for row in _gpu_pieces_query(session, tenant_id, start, end, bounds, codes):
            code, gpu, model, plan = int(row[0]), str(row[1]), str(row[2]), str(row[3])
            holders = energy.get(code, []) + gpu_time.get((code, model, plan), [])
            if not holders:
                continue
            value = _measures(row, 4)
            key = (gpu, model, plan)
            for index in holders:
                sums = per_line[index]
                before = sums.get(key)
                sums[key] = value if before is None else before + value
        for item, per_gpu in zip(items, per_line):
            total = _sum(per_gpu.values())
            out[item.position] = LineUsage(
                measure=item.measure,
                total=total,
                by_gpu=[GpuUsage(g, m, p, v) for (g, m, p), v in sorted(per_gpu.items())],
                matches_quantity=total.measure(item.measure) == item.quantity_base,
            )
    return out


def invoice_detail(
    session: Session, reference: str | int, owner_check: OwnerCheck | None = None, include_drafts: bool = True
) -> InvoiceDetail:
    """An invoice by number or id: its header, its lines with the usage behind each (`LineUsage`),
    and its credit notes.

    Pass `owner_check=lambda tenant_id: check_owner(principal, tenant_id)`: it runs before anything
    but the invoice's owner is read, and a refusal is the same NotFound as an unknown reference
    (see `find_invoice`)."""
    invoice = find_invoice(session, reference, owner_check, include_drafts)
    tenant = get_tenant(session, invoice.tenant_id)
    payment = session.scalar(select(StripeInvoiceSync.payment_status).where(StripeInvoiceSync.invoice_id == invoice.id))
    usage = _line_usage(session, invoice.tenant_id, invoice.lines)
    lines = [LineDetail(line_from_row(line), usage.get(line.position)) for line in invoice.lines]
    notes = [
        CreditNoteSummary(n.number, n.currency, n.amount, n.reason, n.created_ms)
        for n in session.scalars(select(CreditNote).where(CreditNote.invoice_id == invoice.id).order_by(CreditNote.id))
    ]
    return InvoiceDetail(_summary(invoice, payment), tenant.name, tenant.timezone, lines, notes)
