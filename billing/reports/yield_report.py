"""The operator's fleet yield report, per period and GPU model. Pure: no SQL, no HTTP, no clock.

The operator rents out its surplus GPU capacity, most of it in the valleys between its own peaks,
and is judged by revenue per GPU and per kilowatt-hour and by how much of its valley capacity it
sold. This module turns hourly usage rows and the period's invoices into those numbers, exactly:
quantities stay integers (GPU-ms, mJ) and money stays `Decimal` (ratios are `Fraction`) until a
value is written out (`billing.reports.yield_render`: text, CSV, JSON), where it is rounded once,
half to even. Which hours are valley is `billing.reports.fleet_calendar`'s; how an invoice's
revenue is shared among GPU models is `billing.reports.revenue`'s.

Definitions (docs/billing.md, "Yield report"):

- window: the fleet period, a calendar month in the operator's time zone (UTC unless told),
  [start_ms, end_ms); the hourly rows whose hour starts in it count;
- leased (rented) GPU time: allocated GPU-ms of rows with a tenant that is not internal; internal:
  rows of an internal tenant (the owner's own training: not for sale, never invoiced); idle: rows
  with tenant "" (metered time on an unleased GPU); available = leased + idle (metered time only:
  a GPU with no samples offers nothing that could be sold; internal time was not offered);
- GPUs: distinct GPU uuids with any row in the window;
- utilization = busy GPU-ms of leased rows / leased GPU-ms;
- energy: every metered mJ of the model's GPUs, leased, internal and idle (the operator pays for all),
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
- energy cost and margin (with the operator's utility tariff, `billing.pricing.tariffs`): energy
  cost = every metered mJ of the model's GPUs (leased, internal and idle) x the tariff's PUE x its
  price in the period each hour starts in, by the tariff version in force that hour, exact, in the
  tariff's currency; gross margin = revenue in that currency - energy cost; per GPU-hour (leased)
  and per kWh (metered, before PUE). Valley alone: the same over the valley hours, with the
  revenue of the invoice lines priced in a valley period (GPU time to its model; energy lines, which
  have no model, to the fleet only). A demand charge is reported, never in the cost;
- offers (docs/market.md): per capacity offer, offered GPU-ms = its GPUs x its window inside the
  report's; sold = the leased time of the leases sold in it, inside both; fill rate = sold /
  offered, in all and per UTC hour. Revenue per offered GPU-hour is the market's: the pre-tax
  amounts of the valley and interruptible plan lines (GPU time, rounding, and the preemption credits, which waive the
  lease's energy too; energy lines carry no plan) over every offer's offered hours.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing.common.instants import ms_to_iso
from billing.pricing.money import zero
from billing.pricing.tariffs import TariffSpan
from billing.reports.errors import ReportError
from billing.reports.fleet_calendar import OTHER, SPLIT, VALLEY, FleetCalendar, hour_classes, valley_intervals
from billing.reports.revenue import InvoiceRevenue, Revenue, attribute_revenue
from schemas.units import MJ_PER_KWH, MS_PER_HOUR

FLEET = ""  # the model name of the fleet row


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
    internal: bool = False  # the tenant is internal: the owner's own use


@dataclass(frozen=True, slots=True)
class OfferWindow:
    """A capacity offer: its GPUs and window [start_ms, end_ms)."""

    offer_id: str
    gpus: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class SoldLease:
    """A lease sold in an offer: [start_ms, end_ms) (end None: open)."""

    offer_id: str
    start_ms: int
    end_ms: int | None


@dataclass(frozen=True, slots=True)
class HourFill:
    """One UTC hour of an offer: offered and sold GPU-ms."""

    hour_start_ms: int
    offered_ms: int
    sold_ms: int

    @property
    def fill_rate(self) -> Fraction | None:
        return None if not self.offered_ms else Fraction(self.sold_ms, self.offered_ms)


@dataclass(frozen=True, slots=True)
class OfferFill:
    offer_id: str
    gpus: int
    offered_ms: int
    sold_ms: int
    hours: tuple[HourFill, ...] = ()  # per UTC hour the offer is open in the window

    @property
    def fill_rate(self) -> Fraction | None:
        return None if not self.offered_ms else Fraction(self.sold_ms, self.offered_ms)


def offer_fills(
    offers: Iterable[OfferWindow], sold: Iterable[SoldLease], start_ms: int, end_ms: int
) -> tuple[OfferFill, ...]:
    """Each offer's offered and sold GPU-ms inside [start_ms, end_ms) (see the module docstring)."""
    windows = {o.offer_id: o for o in offers}
    sold_by_hour: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for lease in sold:
        offer = windows.get(lease.offer_id)
        if offer is None:
            continue
        lo = max(lease.start_ms, offer.start_ms, start_ms)
        hi = min(lease.end_ms if lease.end_ms is not None else end_ms, offer.end_ms, end_ms)
        for hour, ms in _by_hour(lo, hi):
            sold_by_hour[lease.offer_id][hour] += ms
    out = []
    for offer_id in sorted(windows):
        offer = windows[offer_id]
        lo, hi = max(offer.start_ms, start_ms), min(offer.end_ms, end_ms)
        sold_here = sold_by_hour.get(offer_id, {})
        hours = tuple(HourFill(hour, offer.gpus * ms, sold_here.get(hour, 0)) for hour, ms in _by_hour(lo, hi))
        out.append(
            OfferFill(offer_id, offer.gpus, sum(h.offered_ms for h in hours), sum(h.sold_ms for h in hours), hours)
        )
    return tuple(out)


def _by_hour(lo_ms: int, hi_ms: int) -> list[tuple[int, int]]:
    """[lo, hi) cut at UTC hours: (hour start, ms of it inside)."""
    out = []
    hour = lo_ms - lo_ms % MS_PER_HOUR
    while hour < hi_ms:
        part = min(hi_ms, hour + MS_PER_HOUR) - max(lo_ms, hour)
        if part > 0:
            out.append((hour, part))
        hour += MS_PER_HOUR
    return out


@dataclass(frozen=True)
class Margin:
    """One model's (or the fleet's, model "") energy cost and gross margin in the tariff's currency."""

    currency: str
    energy_cost: Fraction
    revenue: Decimal
    leased_ms: int
    energy_mj: int
    valley_energy_cost: Fraction
    valley_revenue: Decimal
    valley_leased_ms: int
    valley_energy_mj: int

    @property
    def gross_margin(self) -> Fraction:
        return Fraction(self.revenue) - self.energy_cost

    @property
    def margin_per_gpu_hour(self) -> Fraction | None:
        return _ratio(self.gross_margin, Fraction(self.leased_ms, MS_PER_HOUR))

    @property
    def margin_per_kwh(self) -> Fraction | None:
        return _ratio(self.gross_margin, Fraction(self.energy_mj, MJ_PER_KWH))

    @property
    def valley_gross_margin(self) -> Fraction:
        return Fraction(self.valley_revenue) - self.valley_energy_cost

    @property
    def valley_margin_per_gpu_hour(self) -> Fraction | None:
        return _ratio(self.valley_gross_margin, Fraction(self.valley_leased_ms, MS_PER_HOUR))

    @property
    def valley_margin_per_kwh(self) -> Fraction | None:
        return _ratio(self.valley_gross_margin, Fraction(self.valley_energy_mj, MJ_PER_KWH))


def _tariff_at(spans: Sequence[TariffSpan], hour_ms: int) -> TariffSpan | None:
    for span in spans:
        if span.start_ms <= hour_ms < span.end_ms:
            return span
    return None


def margins(
    totals: Iterable[HourTotal],
    classes: Mapping[int, str],
    tariffs: Sequence[TariffSpan],
    models: Sequence[ModelYield],
    fleet: ModelYield,
    invoices: Sequence[InvoiceRevenue],
    valley_periods: frozenset[str],
) -> dict[str, Margin]:
    """Energy cost and margin per model and for the fleet ("") (see the module docstring); empty
    without a tariff."""
    if not tariffs:
        return {}
    currency = tariffs[-1].tariff.currency
    cost: dict[str, list[Fraction]] = defaultdict(lambda: [Fraction(0), Fraction(0)])
    valley_mj: dict[str, int] = defaultdict(int)
    for row in totals:
        hour_class = classes.get(row.hour_start_ms)
        span = _tariff_at(tariffs, row.hour_start_ms)
        if hour_class is None or span is None or span.tariff.currency != currency:
            continue
        value = span.tariff.energy_cost(row.hour_start_ms, row.energy_mj)
        for name in (row.model, FLEET):
            cost[name][0] += value
            if hour_class == VALLEY:
                cost[name][1] += value
                valley_mj[name] += row.energy_mj
    valley_revenue: dict[str, Decimal] = defaultdict(lambda: zero(currency))
    for invoice in invoices:
        if invoice.currency != currency:
            continue
        for line in invoice.lines:
            if line.tou_period in valley_periods and line.kind not in ("tax", "credit"):
                valley_revenue[FLEET] += line.amount
                if line.model:
                    valley_revenue[line.model] += line.amount
    out = {}
    for model in (*models, fleet):
        spent = cost[model.model]
        out[model.model] = Margin(
            currency,
            spent[0],
            model.revenue_of(currency),
            model.leased_ms,
            model.energy_mj,
            spent[1],
            valley_revenue[model.model],
            model.valley_leased_ms,
            valley_mj[model.model],
        )
    return out


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
    internal_ms: int = 0  # the owner's own use (internal tenants): not for sale
    energy_internal_mj: int = 0

    @property
    def available_ms(self) -> int:
        return self.leased_ms + self.idle_ms

    @property
    def busy_ms(self) -> int:
        return self.busy_leased_ms + self.busy_idle_ms

    @property
    def energy_mj(self) -> int:
        return self.energy_leased_mj + self.energy_idle_mj + self.energy_internal_mj

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
    margins: Mapping[str, Margin] = field(default_factory=dict)  # model ("" the fleet) -> cost and margin
    tariff: str | None = None  # the tariff versions that priced the energy
    demand_per_kw_month: Decimal | None = None  # the tariff's demand charge: reported only
    offers: tuple[OfferFill, ...] = ()
    market_revenue: Mapping[str, Decimal] = field(default_factory=dict)  # valley + interruptible plan lines

    def market_revenue_per_offered_gpu_hour(self, currency: str) -> Fraction | None:
        offered = sum(o.offered_ms for o in self.offers)
        return _ratio(self.market_revenue.get(currency, zero(currency)), Fraction(offered, MS_PER_HOUR))

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
    internal: bool = False  # an internal tenant's (then not leased)


@dataclass(frozen=True)
class FleetUsage:
    """The hourly totals of the window and how many distinct GPUs had a row, per model and in all."""

    totals: tuple[HourTotal, ...]
    gpus: Mapping[str, int]
    fleet_gpus: int


def summarize(rows: Iterable[HourRow]) -> FleetUsage:
    """Hourly rows (per GPU and tenant) -> the report's input: the same sums the adapter's SQL makes."""
    sums: dict[tuple[str, bool, int, bool], list[int]] = defaultdict(lambda: [0, 0, 0])
    gpus: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        acc = sums[(row.model, row.tenant_id != "" and not row.internal, row.hour_start_ms, row.internal)]
        acc[0] += row.allocated_gpu_ms
        acc[1] += row.busy_gpu_ms
        acc[2] += row.energy_mj
        gpus[row.model].add(row.gpu_uuid)
    return FleetUsage(
        totals=tuple(
            HourTotal(m, leased, hour, acc[0], acc[1], acc[2], internal)
            for (m, leased, hour, internal), acc in sorted(sums.items())
        ),
        gpus={model: len(ids) for model, ids in sorted(gpus.items())},
        fleet_gpus=len(set().union(*gpus.values())) if gpus else 0,
    )


@dataclass
class _Acc:
    values: list[int] = field(default_factory=lambda: [0] * 11)

    def add(self, row: HourTotal, hour_class: str) -> None:
        v = self.values
        if row.internal:  # the owner's own use: neither sold nor for sale
            v[9] += row.allocated_gpu_ms
            v[10] += row.energy_mj
            return
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
        return ModelYield(model, gpus, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], dict(revenue), v[9], v[10])


def _hour_classes(start_ms: int, end_ms: int, calendar: FleetCalendar | None) -> dict[int, str]:
    """Each whole UTC hour of the window by its valley class; every hour OTHER without a calendar."""
    intervals = valley_intervals(calendar.spans, calendar.valley_periods) if calendar is not None else []
    classes = hour_classes(start_ms, end_ms, intervals)
    if calendar is None:
        classes = dict.fromkeys(classes, OTHER)
    return classes


def _sum_usage(totals: Iterable[HourTotal], classes: Mapping[int, str]) -> tuple[dict[str, _Acc], _Acc]:
    """The hourly totals of the window's hours summed per model and for the fleet."""
    per_model: dict[str, _Acc] = defaultdict(_Acc)
    fleet = _Acc()
    for row in totals:
        if row.hour_start_ms % MS_PER_HOUR:
            raise ReportError(f"an hourly row of {row.model} starts at {ms_to_iso(row.hour_start_ms)}, not on an hour")
        hour_class = classes.get(row.hour_start_ms)
        if hour_class is None:
            continue
        per_model[row.model].add(row, hour_class)
        fleet.add(row, hour_class)
    return per_model, fleet


def _fleet_revenue(revenue: Revenue, models: Iterable[ModelYield]) -> dict[str, Decimal]:
    """The fleet's revenue per currency: the models' and the unallocated, checked against the invoices'
    subtotals (the invariant, every time)."""
    fleet_money: dict[str, Decimal] = {c: zero(c) for c in revenue.invoiced}
    for currency, amount in revenue.unallocated.items():
        fleet_money[currency] = fleet_money.get(currency, zero(currency)) + amount
    for row in models:
        for currency, amount in row.revenue.items():
            fleet_money[currency] = fleet_money.get(currency, zero(currency)) + amount
    for currency in set(fleet_money) | set(revenue.invoiced):
        amount = fleet_money.get(currency, zero(currency))
        if amount != revenue.invoiced.get(currency, zero(currency)):
            raise ReportError(f"revenue {amount} {currency} does not add up to the invoices' {currency} subtotals")
    return {c: fleet_money[c] for c in sorted(fleet_money)}


def _report_notes(calendar: FleetCalendar | None, split_hours: int, revenue: Revenue) -> list[str]:
    """What the reader of the report must know: a calendar with no valley, hours astride a boundary,
    revenue no model holds."""
    notes = []
    if calendar is not None and not calendar.names_a_valley():
        notes.append(
            f"the fleet calendar ({calendar.card}) has no period named {', '.join(sorted(calendar.valley_periods))}: "
            "no hour is valley"
        )
    if split_hours:
        notes.append(
            f"{split_hours} hour(s) lie astride a valley boundary of the fleet calendar (a zone with a part-hour "
            "offset): they count in neither valley figure"
        )
    if revenue.unallocated:
        notes.append(
            "revenue of invoices with no GPU-model line (e.g. a commitment true-up alone) is in the fleet "
            "total only: " + ", ".join(f"{a} {c}" for c, a in revenue.unallocated.items())
        )
    return notes


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
    offers: Sequence[OfferWindow] = (),
    sold: Sequence[SoldLease] = (),
    market_plans: Sequence[str] = ("valley", "interruptible"),
    tariffs: Sequence[TariffSpan] = (),
) -> YieldReport:
    """The report of the window [start_ms, end_ms) (whole UTC hours): hours outside it are ignored
    (`usage.gpus` must count the GPUs of the window's rows only)."""
    invoices = tuple(invoices)
    classes = _hour_classes(start_ms, end_ms, calendar)
    per_model, fleet = _sum_usage(usage.totals, classes)
    revenue = attribute_revenue(invoices)
    names = sorted(set(per_model) | set(revenue.by_model))
    models = tuple(
        per_model[name].result(name, usage.gpus.get(name, 0), revenue.by_model.get(name, {})) for name in names
    )
    fleet_money = _fleet_revenue(revenue, models)
    fleet_row = fleet.result(FLEET, usage.fleet_gpus, fleet_money)
    valley_names = frozenset(calendar.valley_periods) if calendar is not None else frozenset()
    costed = margins(usage.totals, classes, tariffs, models, fleet_row, invoices, valley_names)
    split = sum(1 for c in classes.values() if c == SPLIT)
    market: dict[str, Decimal] = {}
    for invoice in invoices:
        for line in invoice.lines:
            if line.plan in market_plans and line.kind not in ("tax", "credit"):
                market[invoice.currency] = market.get(invoice.currency, zero(invoice.currency)) + line.amount
    return YieldReport(
        period=period,
        timezone=timezone,
        start_ms=start_ms,
        end_ms=end_ms,
        models=models,
        fleet=fleet_row,
        revenue=revenue,
        basis=basis,
        calendar=calendar,
        hours=len(classes),
        valley_hours=sum(1 for c in classes.values() if c == VALLEY),
        split_hours=split,
        notes=(*notes, *_report_notes(calendar, split, revenue)),
        offers=offer_fills(offers, sold, start_ms, end_ms),
        margins=costed,
        tariff=", ".join(span.tariff.label for span in tariffs) or None,
        demand_per_kw_month=tariffs[-1].tariff.demand_per_kw_month if tariffs else None,
        market_revenue=dict(sorted(market.items())),
    )


# TRANSITIONAL re-export for issue 16; removed when the callers move: the renderers are
# billing.reports.yield_render's, rate_places billing.pricing.money's (billing/reports/cli.py,
# billing/web/portal/operator.py and two tests still ask this module).
_MOVED = frozenset({"csv_text", "csv_rows", "to_json", "row_json", "text", "CSV_COLUMNS", "rate_places"})


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from billing.reports import yield_render

        return getattr(yield_render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
