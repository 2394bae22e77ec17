"""The operator's fleet yield report, per period and GPU model. Pure: no SQL, no HTTP, no clock.

The operator rents out its surplus GPU capacity, most of it in the valleys between its own peaks,
and is judged by revenue per GPU and per kilowatt-hour and by how much of its valley capacity it
sold. This module turns hourly usage rows and the period's invoices into those numbers, exactly:
quantities stay integers (GPU-ms, mJ) and money stays `Decimal` (ratios are `Fraction`) until a
value is written out, where it is rounded once, half to even.

Definitions (docs/billing.md, "Yield report"):

- window: the fleet period, a calendar month in the operator's time zone (UTC unless told),
  [start_ms, end_ms); the hourly rows whose hour starts in it count;
- leased GPU time: allocated GPU-ms of rows with a tenant; idle: rows with tenant "" (metered time
  on an unleased GPU); available = leased + idle (metered time only: a GPU with no samples
  offers nothing that could be sold);
- GPUs: distinct GPU uuids with any row in the window;
- utilization = busy GPU-ms of leased rows / leased GPU-ms;
- energy: every metered mJ of the model's GPUs, leased and idle (the operator pays for both),
  without PUE; busy GPU-hours per kWh = every busy GPU-ms (leased and idle) / that energy;
- valley: the minutes a fleet calendar (a rate card's TOU calendar) puts in a valley period;
  an hour counts as valley when all of it is, as not valley when none of it is; an hour astride
  a boundary (a calendar zone with a half-hour offset) counts in neither and is counted apart;
  valley share sold = leased valley GPU-ms / available valley GPU-ms;
- revenue: the pre-tax amount (every line but tax and credit: GPU time, its rounding, energy,
  discount, commitment true-up, corrections) of the period's invoices, by invoice `period` label
  (each tenant's own month) and status (issued; drafts only when asked). A line with a model goes
  to that model; the lines of an invoice without one (energy, discount, true-up) are shared among
  that invoice's models in proportion to their model lines' amounts (negative sums count as 0;
  all zero: by their GPU-ms), in whole minor units by largest remainder (ties: model name), so
  every invoice is shared out exactly; an invoice with no model line at all stays unallocated.
  Money in different currencies is never added: every money figure is per currency. Hence, per
  currency: sum over models of revenue + unallocated == sum of the invoices' subtotals, exactly.
"""

from __future__ import annotations

import csv
import io
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing.common.instants import ms_to_iso
from billing.pricing.calendar import TouCalendar
from billing.pricing.money import from_minor, minor_units, round_half_even, to_minor, zero
from billing.reports.errors import ReportError
from schemas.csv_cells import csv_cell
from schemas.units import MJ_PER_KWH, MS_PER_HOUR

NOT_REVENUE = frozenset({"tax", "credit"})  # every other invoice line is pre-tax revenue
VALLEY, OTHER, SPLIT = "valley", "other", "split"
FLEET = ""  # the model name of the fleet row
HOURS_PLACES = 6  # GPU-hours and kWh written out
RATIO_PLACES = 6  # utilization, shares (as fractions of 1)


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourRow:
    """One `usage_hourly` row: a GPU's usage for a tenant ("" for idle time) in one UTC hour."""

    tenant_id: str
    gpu_uuid: str
    model: str
    hour_start_ms: int
    allocated_gpu_ms: int
    busy_gpu_ms: int
    energy_mj: int


@dataclass(frozen=True, slots=True)
class RevenueLine:
    """An invoice line as revenue sees it: its kind, model ("" for none), amount and GPU-ms."""

    kind: str
    model: str
    amount: Decimal
    quantity_ms: int = 0


@dataclass(frozen=True)
class InvoiceRevenue:
    """An invoice of the period: `subtotal` is its pre-tax total, which its lines must make up."""

    invoice_id: int
    label: str  # its number, or "draft #7"
    tenant_id: str
    currency: str
    status: str
    subtotal: Decimal
    lines: tuple[RevenueLine, ...]


@dataclass(frozen=True)
class CalendarSpan:
    """The TOU calendar of a rate card version, in force over [start_ms, end_ms)."""

    start_ms: int
    end_ms: int
    calendar: TouCalendar
    label: str  # "demo v1"


@dataclass(frozen=True)
class FleetCalendar:
    """Which minutes are valley for the fleet: a rate card's calendars over the window."""

    card: str
    spans: tuple[CalendarSpan, ...]
    valley_periods: frozenset[str]
    chosen_by: str  # why this card: "--calendar-card", "the card of most contracts (2 of 3)"


def calendar_spans(
    versions: Sequence[tuple[int, int, TouCalendar]], start_ms: int, end_ms: int
) -> list[tuple[int, int, int, TouCalendar]]:
    """(start, end, version, calendar) tiling [start_ms, end_ms) from versions given as
    (effective_from_ms, version, calendar): each in force from its instant to the next one's (the
    higher version wins a tie); before the first, the first (the fleet had a valley then too)."""
    if not versions:
        return []
    latest: dict[int, tuple[int, TouCalendar]] = {}
    for effective, version, calendar in versions:
        held = latest.get(effective)
        if held is None or version > held[0]:
            latest[effective] = (version, calendar)
    instants = sorted(latest)
    out: list[tuple[int, int, int, TouCalendar]] = []
    for index, instant in enumerate(instants):
        lo = start_ms if index == 0 else max(start_ms, instant)
        hi = end_ms if index + 1 == len(instants) else min(end_ms, instants[index + 1])
        if lo < hi:
            version, calendar = latest[instant]
            out.append((lo, hi, version, calendar))
    return out


# -- valley hours ------------------------------------------------------------------------------


def valley_intervals(spans: Iterable[CalendarSpan], valley_periods: frozenset[str]) -> list[tuple[int, int]]:
    """The valley minutes of the spans as sorted, merged [start, end) intervals (UTC ms)."""
    pieces = sorted(
        (segment.start_ms, segment.end_ms)
        for span in spans
        for segment in span.calendar.segments(span.start_ms, span.end_ms)
        if segment.period in valley_periods
    )
    merged: list[tuple[int, int]] = []
    for lo, hi in pieces:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def hour_classes(start_ms: int, end_ms: int, intervals: Sequence[tuple[int, int]]) -> dict[int, str]:
    """Each whole UTC hour of [start_ms, end_ms) -> VALLEY (all of it), OTHER (none) or SPLIT."""
    if start_ms % MS_PER_HOUR or end_ms % MS_PER_HOUR:
        raise ReportError(
            f"the window {ms_to_iso(start_ms)}..{ms_to_iso(end_ms)} is not whole UTC hours: the hourly rows "
            "cannot be cut inside an hour (choose a time zone with a whole-hour offset)"
        )
    starts = [lo for lo, _ in intervals]
    out: dict[int, str] = {}
    for hour in range(start_ms, end_ms, MS_PER_HOUR):
        end = hour + MS_PER_HOUR
        covered = 0
        index = max(0, bisect_right(starts, hour) - 1)
        while index < len(intervals) and intervals[index][0] < end:
            lo, hi = intervals[index]
            covered += max(0, min(hi, end) - max(lo, hour))
            index += 1
        out[hour] = VALLEY if covered == MS_PER_HOUR else OTHER if covered == 0 else SPLIT
    return out


# -- revenue -----------------------------------------------------------------------------------


def largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`total` (integer minor units, any sign) shared in proportion to non-negative integer
    `weights` (sum > 0): floors first, then one unit each to the largest remainders (ties: key
    order). The parts sum to `total` exactly."""
    if any(w < 0 for w in weights.values()):
        raise ReportError("largest_remainder: weights must be >= 0")
    whole = sum(weights.values())
    if whole <= 0:
        raise ReportError("largest_remainder: the weights sum to 0")
    sign, amount = (-1, -total) if total < 0 else (1, total)
    parts: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    for key in sorted(weights):
        quotient, remainder = divmod(amount * weights[key], whole)
        parts[key] = quotient
        remainders.append((remainder, key))
    left = amount - sum(parts.values())
    for _, key in sorted(remainders, key=lambda r: (-r[0], r[1]))[:left]:
        parts[key] += 1
    return {key: sign * value for key, value in parts.items()}


@dataclass(frozen=True)
class Revenue:
    """Revenue per model and currency, what stayed unallocated, and what the invoices add up to."""

    by_model: Mapping[str, Mapping[str, Decimal]]
    unallocated: Mapping[str, Decimal]
    invoiced: Mapping[str, Decimal]  # per currency: the sum of the invoices' subtotals
    invoices: int


def attribute_revenue(invoices: Iterable[InvoiceRevenue]) -> Revenue:
    """Share each invoice's pre-tax amount among GPU models (see the module docstring)."""
    by_model: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # model -> currency -> minor
    unallocated: dict[str, int] = defaultdict(int)
    invoiced: dict[str, int] = defaultdict(int)
    count = 0
    for invoice in invoices:
        count += 1
        currency = invoice.currency
        model_minor: dict[str, int] = defaultdict(int)
        model_ms: dict[str, int] = defaultdict(int)
        rest = 0
        for line in invoice.lines:
            if line.kind in NOT_REVENUE:
                continue
            units = to_minor(line.amount, currency)
            if line.model:
                model_minor[line.model] += units
                model_ms[line.model] += line.quantity_ms
            else:
                rest += units
        subtotal = to_minor(invoice.subtotal, currency)
        if sum(model_minor.values()) + rest != subtotal:
            raise ReportError(
                f"invoice {invoice.label} of tenant {invoice.tenant_id}: its pre-tax lines sum to "
                f"{from_minor(sum(model_minor.values()) + rest, currency)} {currency}, its subtotal is "
                f"{invoice.subtotal} {currency}"
            )
        invoiced[currency] += subtotal
        for model, units in model_minor.items():
            by_model[model][currency] += units
        if rest == 0:
            continue
        weights = {model: max(0, units) for model, units in model_minor.items()}
        if not sum(weights.values()):
            weights = {model: max(0, ms) for model, ms in model_ms.items()}
        if not sum(weights.values()):
            unallocated[currency] += rest
            continue
        for model, units in largest_remainder(rest, weights).items():
            by_model[model][currency] += units
    return Revenue(
        by_model={
            model: {c: from_minor(u, c) for c, u in sorted(money.items())} for model, money in sorted(by_model.items())
        },
        unallocated={c: from_minor(u, c) for c, u in sorted(unallocated.items()) if u},
        invoiced={c: from_minor(u, c) for c, u in sorted(invoiced.items())},
        invoices=count,
    )


# -- the report --------------------------------------------------------------------------------


def _ratio(numerator: int | Fraction | Decimal, denominator: int | Fraction) -> Fraction | None:
    return None if not denominator else Fraction(numerator) / Fraction(denominator)


@dataclass(frozen=True)
class ModelYield:
    """One GPU model's (or, with model "", the fleet's) capacity, energy and revenue in the window."""

    model: str
    gpus: int
    leased_ms: int
    idle_ms: int
    busy_leased_ms: int
    busy_idle_ms: int
    energy_leased_mj: int
    energy_idle_mj: int
    valley_leased_ms: int
    valley_idle_ms: int
    split_ms: int  # metered GPU-ms in hours astride a valley boundary (in neither valley figure)
    revenue: Mapping[str, Decimal] = field(default_factory=dict)

    @property
    def available_ms(self) -> int:
        return self.leased_ms + self.idle_ms

    @property
    def busy_ms(self) -> int:
        return self.busy_leased_ms + self.busy_idle_ms

    @property
    def energy_mj(self) -> int:
        return self.energy_leased_mj + self.energy_idle_mj

    @property
    def valley_available_ms(self) -> int:
        return self.valley_leased_ms + self.valley_idle_ms

    @property
    def utilization(self) -> Fraction | None:
        """Busy over leased."""
        return _ratio(self.busy_leased_ms, self.leased_ms)

    @property
    def leased_share(self) -> Fraction | None:
        """Leased over available."""
        return _ratio(self.leased_ms, self.available_ms)

    @property
    def valley_share(self) -> Fraction | None:
        """Leased valley GPU time over available valley GPU time."""
        return _ratio(self.valley_leased_ms, self.valley_available_ms)

    @property
    def busy_hours_per_kwh(self) -> Fraction | None:
        return _ratio(Fraction(self.busy_ms, MS_PER_HOUR), Fraction(self.energy_mj, MJ_PER_KWH))

    def revenue_of(self, currency: str) -> Decimal:
        return self.revenue.get(currency, zero(currency))

    def revenue_per_gpu(self, currency: str) -> Fraction | None:
        return _ratio(self.revenue_of(currency), self.gpus)

    def revenue_per_gpu_hour(self, currency: str) -> Fraction | None:
        """Revenue per GPU-hour available."""
        return _ratio(self.revenue_of(currency), Fraction(self.available_ms, MS_PER_HOUR))

    def revenue_per_kwh(self, currency: str) -> Fraction | None:
        return _ratio(self.revenue_of(currency), Fraction(self.energy_mj, MJ_PER_KWH))


@dataclass(frozen=True)
class YieldReport:
    period: str
    timezone: str  # the fleet period's zone
    start_ms: int
    end_ms: int
    models: tuple[ModelYield, ...]
    fleet: ModelYield
    revenue: Revenue
    basis: str  # "issued" or "issued and draft"
    calendar: FleetCalendar | None
    hours: int  # whole hours in the window
    valley_hours: int  # of them wholly valley by the fleet calendar
    split_hours: int  # of them astride a valley boundary
    notes: tuple[str, ...] = ()

    @property
    def currencies(self) -> tuple[str, ...]:
        names = set(self.revenue.invoiced) | set(self.revenue.unallocated)
        for model in self.models:
            names |= set(model.revenue)
        return tuple(sorted(names))

    def model(self, name: str) -> ModelYield:
        for row in self.models:
            if row.model == name:
                return row
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class HourTotal:
    """Usage of one GPU model in one UTC hour, leased (tenant set) or idle, summed over its GPUs:
    what the report needs of the hourly rows (the adapter sums them in SQL; `summarize` in Python)."""

    model: str
    leased: bool
    hour_start_ms: int
    allocated_gpu_ms: int
    busy_gpu_ms: int
    energy_mj: int


@dataclass(frozen=True)
class FleetUsage:
    """The hourly totals of the window and how many distinct GPUs had a row, per model and in all."""

    totals: tuple[HourTotal, ...]
    gpus: Mapping[str, int]
    fleet_gpus: int


def summarize(rows: Iterable[HourRow]) -> FleetUsage:
    """Hourly rows (per GPU and tenant) -> the report's input: the same sums the adapter's SQL makes."""
    sums: dict[tuple[str, bool, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    gpus: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        acc = sums[(row.model, row.tenant_id != "", row.hour_start_ms)]
        acc[0] += row.allocated_gpu_ms
        acc[1] += row.busy_gpu_ms
        acc[2] += row.energy_mj
        gpus[row.model].add(row.gpu_uuid)
    return FleetUsage(
        totals=tuple(HourTotal(m, leased, hour, *acc) for (m, leased, hour), acc in sorted(sums.items())),
        gpus={model: len(ids) for model, ids in sorted(gpus.items())},
        fleet_gpus=len(set().union(*gpus.values())) if gpus else 0,
    )


@dataclass
class _Acc:
    values: list[int] = field(default_factory=lambda: [0] * 9)

    def add(self, row: HourTotal, hour_class: str) -> None:
        v = self.values
        if row.leased:
            v[0] += row.allocated_gpu_ms
            v[2] += row.busy_gpu_ms
            v[4] += row.energy_mj
        else:
            v[1] += row.allocated_gpu_ms
            v[3] += row.busy_gpu_ms
            v[5] += row.energy_mj
        if hour_class == VALLEY:
            v[6 if row.leased else 7] += row.allocated_gpu_ms
        elif hour_class == SPLIT:
            v[8] += row.allocated_gpu_ms

    def result(self, model: str, gpus: int, revenue: Mapping[str, Decimal]) -> ModelYield:
        v = self.values
        return ModelYield(model, gpus, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], dict(revenue))


def build_report(
    *,
    period: str,
    timezone: str,
    start_ms: int,
    end_ms: int,
    usage: FleetUsage,
    invoices: Iterable[InvoiceRevenue],
    calendar: FleetCalendar | None,
    basis: str = "issued",
    notes: Sequence[str] = (),
) -> YieldReport:
    """The report of the window [start_ms, end_ms) (whole UTC hours): hours outside it are ignored
    (`usage.gpus` must count the GPUs of the window's rows only)."""
    intervals = valley_intervals(calendar.spans, calendar.valley_periods) if calendar is not None else []
    classes = hour_classes(start_ms, end_ms, intervals)
    if calendar is None:
        classes = dict.fromkeys(classes, OTHER)
    per_model: dict[str, _Acc] = defaultdict(_Acc)
    fleet = _Acc()
    for row in usage.totals:
        if row.hour_start_ms % MS_PER_HOUR:
            raise ReportError(f"an hourly row of {row.model} starts at {ms_to_iso(row.hour_start_ms)}, not on an hour")
        hour_class = classes.get(row.hour_start_ms)
        if hour_class is None:
            continue
        per_model[row.model].add(row, hour_class)
        fleet.add(row, hour_class)
    revenue = attribute_revenue(invoices)
    names = sorted(set(per_model) | set(revenue.by_model))
    models = tuple(
        per_model[name].result(name, usage.gpus.get(name, 0), revenue.by_model.get(name, {})) for name in names
    )
    fleet_money: dict[str, Decimal] = {c: zero(c) for c in revenue.invoiced}
    for currency, amount in revenue.unallocated.items():
        fleet_money[currency] = fleet_money.get(currency, zero(currency)) + amount
    for row_ in models:
        for currency, amount in row_.revenue.items():
            fleet_money[currency] = fleet_money.get(currency, zero(currency)) + amount
    out_notes = list(notes)
    if calendar is not None and not any(
        period in span.calendar.periods for span in calendar.spans for period in calendar.valley_periods
    ):
        out_notes.append(
            f"the fleet calendar ({calendar.card}) has no period named {', '.join(sorted(calendar.valley_periods))}: "
            "no hour is valley"
        )
    split = sum(1 for c in classes.values() if c == SPLIT)
    if split:
        out_notes.append(
            f"{split} hour(s) lie astride a valley boundary of the fleet calendar (a zone with a part-hour "
            "offset): they count in neither valley figure"
        )
    if revenue.unallocated:
        out_notes.append(
            "revenue of invoices with no GPU-model line (e.g. a commitment true-up alone) is in the fleet "
            "total only: " + ", ".join(f"{a} {c}" for c, a in revenue.unallocated.items())
        )
    for currency in set(fleet_money) | set(revenue.invoiced):
        amount = fleet_money.get(currency, zero(currency))
        if amount != revenue.invoiced.get(currency, zero(currency)):  # the invariant, checked every time
            raise ReportError(f"revenue {amount} {currency} does not add up to the invoices' {currency} subtotals")
    return YieldReport(
        period=period,
        timezone=timezone,
        start_ms=start_ms,
        end_ms=end_ms,
        models=models,
        fleet=fleet.result(FLEET, usage.fleet_gpus, {c: fleet_money[c] for c in sorted(fleet_money)}),
        revenue=revenue,
        basis=basis,
        calendar=calendar,
        hours=len(classes),
        valley_hours=sum(1 for c in classes.values() if c == VALLEY),
        split_hours=split,
        notes=tuple(out_notes),
    )


# -- writing it out ----------------------------------------------------------------------------


def decimal_text(value: Fraction | Decimal | int | None, places: int) -> str | None:
    """An exact value rounded once (half to even) to `places`, as text; None stays None."""
    return None if value is None else str(round_half_even(value, places))


def hours_text(ms: int) -> str:
    return str(round_half_even(Fraction(ms, MS_PER_HOUR), HOURS_PLACES))


def kwh_text(mj: int) -> str:
    return str(round_half_even(Fraction(mj, MJ_PER_KWH), HOURS_PLACES))


def rate_places(currency: str) -> int:
    """Places of a money rate (per GPU-hour, per kWh): two more than the currency's minor unit."""
    return minor_units(currency) + 2


def _money_json(row: ModelYield, currencies: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for currency in currencies:
        places = rate_places(currency)
        out[currency] = {
            "revenue": str(row.revenue_of(currency)),
            "per_gpu": decimal_text(row.revenue_per_gpu(currency), places),
            "per_gpu_hour_available": decimal_text(row.revenue_per_gpu_hour(currency), places),
            "per_kwh": decimal_text(row.revenue_per_kwh(currency), places),
        }
    return out


def row_json(row: ModelYield, currencies: Sequence[str]) -> dict[str, Any]:
    return {
        "model": row.model or None,
        "gpus": row.gpus,
        "gpu_ms": {
            "available": row.available_ms,
            "leased": row.leased_ms,
            "idle": row.idle_ms,
            "busy": row.busy_ms,
            "busy_leased": row.busy_leased_ms,
            "valley_available": row.valley_available_ms,
            "valley_leased": row.valley_leased_ms,
            "astride_valley_boundary": row.split_ms,
        },
        "gpu_hours": {
            "available": hours_text(row.available_ms),
            "leased": hours_text(row.leased_ms),
            "idle": hours_text(row.idle_ms),
            "busy": hours_text(row.busy_ms),
            "valley_available": hours_text(row.valley_available_ms),
            "valley_leased": hours_text(row.valley_leased_ms),
        },
        "energy_mj": row.energy_mj,
        "energy_kwh": kwh_text(row.energy_mj),
        "energy_leased_kwh": kwh_text(row.energy_leased_mj),
        "utilization": decimal_text(row.utilization, RATIO_PLACES),
        "leased_share": decimal_text(row.leased_share, RATIO_PLACES),
        "valley_share_sold": decimal_text(row.valley_share, RATIO_PLACES),
        "busy_gpu_hours_per_kwh": decimal_text(row.busy_hours_per_kwh, RATIO_PLACES),
        "revenue": _money_json(row, currencies),
    }


def to_json(report: YieldReport) -> dict[str, Any]:
    """Everything, JSON-ready: integers as integers, money and ratios as exact decimal strings."""
    currencies = report.currencies
    calendar = report.calendar
    return {
        "period": report.period,
        "timezone": report.timezone,
        "window": {"start": ms_to_iso(report.start_ms), "end": ms_to_iso(report.end_ms), "hours": report.hours},
        "calendar": None
        if calendar is None
        else {
            "card": calendar.card,
            "chosen_by": calendar.chosen_by,
            "versions": [span.label for span in calendar.spans],
            "timezone": sorted({span.calendar.timezone for span in calendar.spans}),
            "valley_periods": sorted(calendar.valley_periods),
            "valley_hours": report.valley_hours,
            "hours_astride_a_boundary": report.split_hours,
        },
        "revenue_basis": {
            "invoices": report.basis,
            "count": report.revenue.invoices,
            "pre_tax_total": {c: str(a) for c, a in report.revenue.invoiced.items()},
            "unallocated": {c: str(a) for c, a in report.revenue.unallocated.items()},
        },
        "currencies": list(currencies),
        "models": [row_json(row, currencies) for row in report.models],
        "fleet": row_json(report.fleet, currencies),
        "notes": list(report.notes),
    }


CSV_COLUMNS = (
    "period",
    "timezone",
    "model",
    "gpus",
    "gpu_hours_available",
    "gpu_hours_leased",
    "gpu_hours_idle",
    "gpu_hours_busy",
    "utilization",
    "leased_share",
    "energy_kwh",
    "busy_gpu_hours_per_kwh",
    "valley_gpu_hours_available",
    "valley_gpu_hours_leased",
    "valley_share_sold",
    "currency",
    "revenue",
    "revenue_per_gpu",
    "revenue_per_gpu_hour_available",
    "revenue_per_kwh",
)


def csv_rows(report: YieldReport) -> list[dict[str, str]]:
    """One row per model and currency (capacity repeated), then the fleet's ("*"); no currency when
    there is no revenue at all."""
    out: list[dict[str, str]] = []
    currencies: Sequence[str] = report.currencies or ("",)
    for row in (*report.models, report.fleet):
        base = {
            "period": report.period,
            "timezone": report.timezone,
            "model": row.model or "*",
            "gpus": str(row.gpus),
            "gpu_hours_available": hours_text(row.available_ms),
            "gpu_hours_leased": hours_text(row.leased_ms),
            "gpu_hours_idle": hours_text(row.idle_ms),
            "gpu_hours_busy": hours_text(row.busy_ms),
            "utilization": decimal_text(row.utilization, RATIO_PLACES) or "",
            "leased_share": decimal_text(row.leased_share, RATIO_PLACES) or "",
            "energy_kwh": kwh_text(row.energy_mj),
            "busy_gpu_hours_per_kwh": decimal_text(row.busy_hours_per_kwh, RATIO_PLACES) or "",
            "valley_gpu_hours_available": hours_text(row.valley_available_ms),
            "valley_gpu_hours_leased": hours_text(row.valley_leased_ms),
            "valley_share_sold": decimal_text(row.valley_share, RATIO_PLACES) or "",
        }
        for currency in currencies:
            money = {
                "currency": currency,
                "revenue": "",
                "revenue_per_gpu": "",
                "revenue_per_gpu_hour_available": "",
                "revenue_per_kwh": "",
            }
            if currency:
                places = rate_places(currency)
                money.update(
                    revenue=str(row.revenue_of(currency)),
                    revenue_per_gpu=decimal_text(row.revenue_per_gpu(currency), places) or "",
                    revenue_per_gpu_hour_available=decimal_text(row.revenue_per_gpu_hour(currency), places) or "",
                    revenue_per_kwh=decimal_text(row.revenue_per_kwh(currency), places) or "",
                )
            out.append({**base, **money})
    return out


def csv_text(report: YieldReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: csv_cell(value) for column, value in row.items()} for row in csv_rows(report))
    return buffer.getvalue()


def _percent(value: Fraction | None) -> str:
    return "-" if value is None else f"{round_half_even(value * 100, 1)} %"


def _fixed(value: Fraction | Decimal | int | None, places: int) -> str:
    return "-" if value is None else f"{round_half_even(value, places):,}"


def text(report: YieldReport) -> str:
    """A plain-text table for a terminal: one line per model, then the fleet."""
    currencies = report.currencies
    head = [
        "model",
        "GPUs",
        "avail GPU-h",
        "leased GPU-h",
        "idle GPU-h",
        "util",
        "kWh",
        "busy GPU-h/kWh",
        "valley sold",
    ]
    for currency in currencies:
        head += [f"revenue {currency}", f"{currency}/GPU", f"{currency}/GPU-h", f"{currency}/kWh"]
    table = [head]
    for row in (*report.models, report.fleet):
        cells = [
            row.model or "fleet",
            str(row.gpus),
            _fixed(Fraction(row.available_ms, MS_PER_HOUR), 2),
            _fixed(Fraction(row.leased_ms, MS_PER_HOUR), 2),
            _fixed(Fraction(row.idle_ms, MS_PER_HOUR), 2),
            _percent(row.utilization),
            _fixed(Fraction(row.energy_mj, MJ_PER_KWH), 2),
            _fixed(row.busy_hours_per_kwh, 3),
            _percent(row.valley_share),
        ]
        for currency in currencies:
            places = minor_units(currency)
            cells += [
                f"{row.revenue_of(currency):,}",
                _fixed(row.revenue_per_gpu(currency), places),
                _fixed(row.revenue_per_gpu_hour(currency), places + 2),
                _fixed(row.revenue_per_kwh(currency), places + 2),
            ]
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = [
        f"Fleet yield {report.period} ({report.timezone} month "
        f"{ms_to_iso(report.start_ms)}..{ms_to_iso(report.end_ms)})"
    ]
    calendar = report.calendar
    if calendar is not None:
        lines.append(
            f"valley: {', '.join(sorted(calendar.valley_periods))} of {', '.join(s.label for s in calendar.spans)} "
            f"({calendar.chosen_by}): {report.valley_hours} of {report.hours} hours"
        )
    pre_tax = ", ".join(f"{a:,} {c}" for c, a in report.revenue.invoiced.items()) or "none"
    lines.append(f"revenue: pre-tax, {report.revenue.invoices} {report.basis} invoice(s) of {report.period}: {pre_tax}")
    lines.append("")
    for index, line in enumerate(table):
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)]
        lines.append("  ".join(cells).rstrip())
        if index in (0, len(table) - 2) and not (index == 0 and len(table) == 2):
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
