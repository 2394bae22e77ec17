"""Rating: quantities + rate card spans -> priced invoice lines. Pure: no I/O, no clock.

Inputs are integer quantities (ms of GPU time, mJ of energy) grouped by pricing segment
(`billing.pricing.segments`). The rater sums its input rows itself, so the result never depends
on their order or on how they were split (how the Parquet happened to be cut into files). The
segments come from `pricing_segments` over the service period, or over the part of it that has
rate cards (a contract starting mid-period); usage in no segment is refused, never dropped.

Rules (each amount is computed exactly with `Fraction` and rounded ONCE, per line, to the
currency's minor unit, half to even; every total is a sum of rounded lines):

- gpu_time: one line per (card span, model, plan, period): allocated GPU-ms x price per GPU-hour.
  Tiered prices count per that key: graduated gives one line per tier reached; volume prices the
  whole quantity at the tier the total reaches (tier bounds are inclusive). Usage whose model is
  unknown (the empty model of the usage records) is priced at the "*" model and described as
  "(unknown model)".
- gpu_time_rounding: per lease, billed = max(minimum, ceil(allocated / increment) x increment)
  (the card of the lease's last segment gives increment and minimum). The uplift, billed - actual,
  is one line per (span, model, plan, period) of the leases' last segments, priced at that key's
  unit price; for a tiered price, the marginal price: that of the last tier the key's GPU time
  reached (volume: the volume tier). The uplift does not count toward tiers. The minimum applies
  only to a lease that started in the service period (`LeaseQuantity.lease_start_ms` None or >=
  the period start), so a lease running across months pays it once.
- energy: one line per (span, period): kWh = mJ / 3.6e9 x PUE, priced per kWh of the period;
  `quantity_base` is the metered mJ, `quantity` the billed kWh (after PUE). A card with no
  energy prices bills no energy.
- preemption_credit (docs/market.md): a lease the owner preempted (`preemptions`) is never rounded
  up (no increment, no minimum). Its usage stays in the lines above; the reader keeps its rows apart
  too (`UsageQuantity.apart_lease`), and what it used is valued per key as those lines price it
  (the key's unit price, for a tiered price the marginal one; energy per period), each key rounded
  once. By the card of its last usage's span (`[interruption]`, `preemption_rule`), a lease preempted
  within the free time of its start is waived (a line of minus that value), one preempted on short
  notice gets the card's percent of it; one negative line per lease naming the lease and the rule.
- sla_credit: per plan with `availability` given and `[sla.<plan>]` on the last card, the credit
  percent the availability earns (`sla_credit_percent`) of the plan's charge (its gpu_time,
  gpu_time_rounding and preemption_credit lines: compute, not energy), one negative line per plan:
  never more than the plan's charge.
- discount: -discount_percent of the lines above (usage and the market's credits), one line, by the
  card in effect at the end of the period (the last span).
- commitment_true_up: if that card has a commitment and usage + discount is below it, the
  difference (also with no usage at all). Not prorated for a partial period.
- tax: (usage + discount + true-up + corrections) x the tenant jurisdiction's rate, one line;
  present whenever there is a line before it.
- credit: prepaid grants drawn against the total after tax, earliest expiry first (None never
  expires: last; ties by granted_at, then credit_id), never below zero, one negative line per
  grant drawn; a grant with expires_at <= the period end is not used.

Each GPU-time line carries its `basis`: how its quantity follows from the usage behind it (a sum,
a tier of the key's total, or the rounding of named leases), so that `explain` can re-derive it
from the Parquet with `tier_quantity` and `rounding_uplift`, the rater's own functions.

Line order: usage/discount/true-up lines by kind, span, model, plan, period, tier; then
corrections (same order); then tax; then credits in drawing order. For money-only lines
(`quantity_base` 0, no units): discount and tax have `quantity` = the amount they apply to and
`unit_price` = the signed rate; commitment_true_up and credit have quantity 1 and unit_price =
amount.

Corrections (late usage of an earlier, finalized period) -- `rate_correction`: the invoicing
service passes the period's COMPLETE quantities (everything known now, original and late) with
the same spans, and the lines already billed for that period (the finalized invoice's lines and
any earlier corrections of it). The period is re-rated without tax and credits, and the result is
the difference per line key (kind, span range, card, plan, model, period, tier): only changed
keys, amounts = new rounded amount - billed rounded amount. So a lease's minimum, tiers, discount
and commitment are applied once for the period, not again for the late part; the lines keep the
original service period, are marked `correction=True` and their description starts with
"Correction for <period>: ". Put them on the next invoice with `rate_tenant(corrections=...)`:
they are taxed there (the next invoice's jurisdiction and card) and credits may pay them. A
negative sum means the late data lowered the amount: a credit note, the service's decision.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction

from billing.common.instants import ms_to_iso
from billing.pricing.errors import PricingError
from billing.pricing.lines import (
    KIND_ORDER,
    MARKET_CREDIT_KINDS,
    PRETAX_KINDS,
    USAGE_KINDS,
    InvoiceLine,
    LeaseRounding,
    LineKind,
    QuantityBasis,
)
from billing.pricing.market_terms import Availability, Preemption, availability, preemption_rule, sla_credit_percent
from billing.pricing.money import minor_units, round_half_even, round_money, to_minor, zero
from billing.pricing.ratecards import Price, RateCardVersion, Tiered
from billing.pricing.segments import CardSpan, PricingSegment
from schemas.leases import PLANS
from schemas.units import MJ_PER_KWH, MS_PER_DAY, MS_PER_HOUR

QUANTITY_PLACES = 6  # display quantities (GPU-hours, kWh)
ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class UsageQuantity:
    """Usage of a tenant on one (plan, model) in one pricing segment. `segment_start_ms` is any
    instant in the segment (normally its start). Any multiset of rows: the rater sums them."""

    tenant_id: str
    plan: str
    model: str
    segment_start_ms: int
    allocated_gpu_ms: int
    busy_gpu_ms: int = 0
    energy_mj: int = 0
    records: int = 0
    apart_lease: str = ""  # a preempted lease whose usage this row is (priced on its own), else ""


@dataclass(frozen=True, slots=True)
class LeaseQuantity:
    """A lease's allocated GPU-ms in the service period. Rows with the same lease_id are summed
    (last_segment_start_ms: the max; lease_start_ms: the min given)."""

    lease_id: str
    plan: str
    model: str
    allocated_gpu_ms: int
    last_segment_start_ms: int
    lease_start_ms: int | None = None  # None: the lease started in this period (the minimum applies)
    unhealthy_ms: int = 0  # of allocated_gpu_ms, metered while the GPU reported NVML errors (the SLA's)


@dataclass(frozen=True, slots=True)
class CreditGrant:
    credit_id: str
    remaining: Decimal  # in the invoice currency
    expires_at_ms: int | None
    granted_at_ms: int


def rounding_uplift(allocated_ms: int, increment_ms: int, minimum_ms: int) -> int:
    """A lease's rounding uplift: max(minimum, ceil(allocated / increment) x increment) - allocated;
    none for a lease with no allocated time."""
    if allocated_ms <= 0:
        return 0
    billed = max(-(-allocated_ms // increment_ms) * increment_ms, minimum_ms)
    return billed - allocated_ms


def tier_quantity(total_ms: int, mode: str, lower_ms: int, upper_ms: int | None) -> int:
    """The GPU-ms a tier (lower_ms, upper_ms] prices of a key's total: graduated, the part of the total
    inside the tier; volume, the whole total when it ends in the tier (bounds inclusive), else none."""
    if mode == "volume":
        return total_ms if total_ms > lower_ms and (upper_ms is None or total_ms <= upper_ms) else 0
    upper = total_ms if upper_ms is None else min(total_ms, upper_ms)
    return max(upper - lower_ms, 0)


@dataclass(frozen=True)
class RatedInvoice:
    """`subtotal` = lines before tax (corrections included), `total` = subtotal + tax,
    `amount_due` = total - credits_applied = the sum of all lines."""

    tenant_id: str
    currency: str
    service_start_ms: int
    service_end_ms: int
    lines: list[InvoiceLine]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    credits_applied: Decimal
    amount_due: Decimal
    credit_drawdowns: list[tuple[str, Decimal]] = field(default_factory=list)


# -- internals ---------------------------------------------------------------------------------


@dataclass
class _Context:
    tenant_id: str
    segments: Sequence[PricingSegment]
    spans: Sequence[CardSpan]
    service_start_ms: int
    service_end_ms: int
    currency: str
    starts: list[int]

    def segment_of(self, ts_ms: int, what: str) -> int:
        index = bisect_right(self.starts, ts_ms) - 1
        if index < 0 or ts_ms >= self.segments[index].end_ms:
            raise PricingError(
                f"{what} at {ms_to_iso(ts_ms)} is in no pricing segment of the service period "
                f"{ms_to_iso(self.service_start_ms)}..{ms_to_iso(self.service_end_ms)} (no rate card in effect?)"
            )
        return index

    def span_range(self, span_index: int) -> tuple[int, int]:
        span = self.spans[span_index]
        return max(span.start_ms, self.service_start_ms), min(span.end_ms, self.service_end_ms)

    @property
    def last_card(self) -> RateCardVersion:
        """The card in effect at the end of the period."""
        for span in reversed(self.spans):
            if span.start_ms < self.service_end_ms:
                return span.card
        return self.spans[-1].card


def _context(
    tenant_id: str,
    segments: Sequence[PricingSegment],
    spans: Sequence[CardSpan],
    service_start_ms: int,
    service_end_ms: int,
) -> _Context:
    if service_end_ms <= service_start_ms:
        raise PricingError(f"service period {ms_to_iso(service_start_ms)}..{ms_to_iso(service_end_ms)} is empty")
    if not spans:
        raise PricingError("no rate card span for the service period")
    currencies = sorted({span.card.currency for span in spans})
    if len(currencies) != 1:
        raise PricingError(f"the rate card spans of one invoice mix currencies: {', '.join(currencies)}")
    cursor = service_start_ms
    for index, segment in enumerate(segments):
        # in order, not overlapping, inside the period; gaps (no contract, no card) price nothing
        if segment.start_ms < cursor or segment.end_ms <= segment.start_ms or segment.end_ms > service_end_ms:
            raise PricingError(
                f"pricing segment {index} ({ms_to_iso(segment.start_ms)}..{ms_to_iso(segment.end_ms)}) is out of "
                f"order or outside the service period: use pricing_segments(spans, start, end)"
            )
        if not 0 <= segment.span_index < len(spans):
            raise PricingError(f"pricing segment {index} names span {segment.span_index}; there are {len(spans)}")
        cursor = segment.end_ms
    return _Context(
        tenant_id,
        segments,
        spans,
        service_start_ms,
        service_end_ms,
        currencies[0],
        [segment.start_ms for segment in segments],
    )


def _hours(ms: int) -> Decimal:
    return round_half_even(Fraction(ms, MS_PER_HOUR), QUANTITY_PLACES)


def _tier_bounds(price: Tiered) -> list[int | None]:
    """Each tier's upper bound in ms (None: unbounded)."""
    return [None if t.up_to_hours is None else int(Fraction(t.up_to_hours) * MS_PER_HOUR) for t in price.tiers]


def _tier_split(price: Tiered, ms: int) -> list[tuple[int, int, Decimal]]:
    """(tier number, ms in it, unit price) for each tier line of `ms` under a tiered price."""
    bounds = _tier_bounds(price)
    if price.mode == "volume":
        for number, (bound, tier) in enumerate(zip(bounds, price.tiers), start=1):
            if bound is None or ms <= bound:
                return [(number, ms, tier.unit_price)]
    out: list[tuple[int, int, Decimal]] = []
    lower = 0
    for number, (bound, tier) in enumerate(zip(bounds, price.tiers), start=1):
        upper = ms if bound is None else min(ms, bound)
        if upper > lower:
            out.append((number, upper - lower, tier.unit_price))
        if bound is None or ms <= bound:
            break
        lower = bound
    return out


def _marginal(price: Price, ms: int) -> tuple[int | None, Decimal]:
    """(tier, unit price) of the last GPU-ms of a key: what its rounding uplift is priced at."""
    if not isinstance(price, Tiered):
        return None, price
    split = _tier_split(price, ms)
    if not split:
        return 1, price.tiers[0].unit_price
    number, _, unit_price = split[-1]
    return number, unit_price


UNKNOWN_MODEL = "(unknown model)"


def model_text(model: str) -> str:
    """A GPU model as a line names it: the usage records' empty model (the agent could not read it) says so."""
    return model if model.strip() else UNKNOWN_MODEL


def _percent_text(rate: Decimal) -> str:
    return format(rate.scaleb(2).normalize(), "f")


def _seconds(ms: int) -> str:
    return format(Decimal(ms).scaleb(-3).normalize(), "f")


def _gpu_amount(quantity_ms: int, unit_price: Decimal, currency: str) -> Decimal:
    """GPU-ms at a price per GPU-hour, rounded once: every GPU-time amount, a line's or a credit's."""
    return round_money(Fraction(quantity_ms) * Fraction(unit_price) / MS_PER_HOUR, currency)


def _billed_kwh(card: RateCardVersion, mj: int) -> Fraction:
    return Fraction(mj, MJ_PER_KWH) * Fraction(card.pue)


def _energy_amount(card: RateCardVersion, period: str, mj: int, currency: str) -> Decimal:
    """Metered mJ x PUE at the card's price of `period`, rounded once: every energy amount."""
    return round_money(_billed_kwh(card, mj) * Fraction(card.energy_price(period)), currency)


def _gpu_line(
    ctx: _Context,
    key: tuple[int, str, str, str],
    kind: LineKind,
    description: str,
    quantity_ms: int,
    unit_price: Decimal,
    tier: int | None,
    segments: tuple[tuple[int, int], ...],
    basis: QuantityBasis,
) -> InvoiceLine:
    """A GPU-time line of one (span, model, plan, period) key: quantity_ms at unit_price per GPU-hour."""
    span_index, model, plan, period = key
    card = ctx.spans[span_index].card
    lo, hi = ctx.span_range(span_index)
    return InvoiceLine(
        kind=kind,
        description=description,
        service_start_ms=lo,
        service_end_ms=hi,
        card_name=card.name,
        card_version=card.version,
        plan=plan,
        model=model,
        tou_period=period,
        quantity_base=quantity_ms,
        base_unit="ms",
        quantity=_hours(quantity_ms),
        unit="GPU-hour",
        unit_price=unit_price,
        amount=_gpu_amount(quantity_ms, unit_price, ctx.currency),
        tier=tier,
        segments=segments,
        basis=basis,
    )


def _usage_lines(
    ctx: _Context,
    usage: Iterable[UsageQuantity],
    leases: Iterable[LeaseQuantity],
    preemptions: Mapping[str, Preemption],
) -> list[InvoiceLine]:
    gpu_ms: dict[tuple[int, str, str, str], int] = defaultdict(int)
    charged: dict[tuple[int, str, str, str], Decimal] = defaultdict(lambda: zero(ctx.currency))  # its gpu_time lines
    gpu_segments: dict[tuple[int, str, str, str], set[int]] = defaultdict(set)
    energy: dict[tuple[int, str], int] = defaultdict(int)
    energy_segments: dict[tuple[int, str], set[int]] = defaultdict(set)
    apart_gpu: dict[str, dict[tuple[int, str, str, str], int]] = defaultdict(lambda: defaultdict(int))
    apart_energy: dict[str, dict[tuple[int, str], int]] = defaultdict(lambda: defaultdict(int))
    for row in usage:
        if row.tenant_id != ctx.tenant_id:
            raise PricingError(f"usage of tenant {row.tenant_id!r} given to the invoice of {ctx.tenant_id!r}")
        if row.plan not in PLANS:
            raise PricingError(f"usage plan {row.plan!r} is not one of {', '.join(PLANS)}")
        index = ctx.segment_of(row.segment_start_ms, "usage")
        segment = ctx.segments[index]
        key = (segment.span_index, row.model, row.plan, segment.period)
        gpu_ms[key] += row.allocated_gpu_ms
        gpu_segments[key].add(index)
        energy[(segment.span_index, segment.period)] += row.energy_mj
        energy_segments[(segment.span_index, segment.period)].add(index)
        if row.apart_lease in preemptions:
            apart_gpu[row.apart_lease][key] += row.allocated_gpu_ms
            apart_energy[row.apart_lease][(segment.span_index, segment.period)] += row.energy_mj

    # leases: sum rows, then the billing increment and minimum
    totals: dict[str, list[int]] = {}
    identity: dict[str, tuple[str, str]] = {}
    started: dict[str, int | None] = {}
    for lease in leases:
        if lease.plan not in PLANS:
            raise PricingError(f"lease {lease.lease_id}: plan {lease.plan!r} is not one of {', '.join(PLANS)}")
        if lease.lease_id in totals:
            if identity[lease.lease_id] != (lease.model, lease.plan):
                raise PricingError(f"lease {lease.lease_id} has rows with different models or plans")
            total = totals[lease.lease_id]
            total[0] += lease.allocated_gpu_ms
            total[1] = max(total[1], lease.last_segment_start_ms)
            held = started[lease.lease_id]
            if lease.lease_start_ms is not None:
                started[lease.lease_id] = lease.lease_start_ms if held is None else min(held, lease.lease_start_ms)
        else:
            totals[lease.lease_id] = [lease.allocated_gpu_ms, lease.last_segment_start_ms]
            identity[lease.lease_id] = (lease.model, lease.plan)
            started[lease.lease_id] = lease.lease_start_ms
    uplift: dict[tuple[int, str, str, str], int] = defaultdict(int)
    uplift_segments: dict[tuple[int, str, str, str], set[int]] = defaultdict(set)
    uplift_leases: dict[tuple[int, str, str, str], list[LeaseRounding]] = defaultdict(list)
    for lease_id in sorted(totals):
        allocated, last_start = totals[lease_id]
        if allocated < 0:
            raise PricingError(f"lease {lease_id}: allocated GPU time {allocated} ms is negative")
        if allocated == 0 or lease_id in preemptions:
            continue  # the owner's preemption never rounds a lease up
        index = ctx.segment_of(last_start, f"lease {lease_id}'s last segment")
        segment = ctx.segments[index]
        card = ctx.spans[segment.span_index].card
        lease_start = started[lease_id]
        minimum = card.minimum_ms if lease_start is None or lease_start >= ctx.service_start_ms else 0
        extra = rounding_uplift(allocated, card.increment_ms, minimum)
        if extra > 0:
            model, plan = identity[lease_id]
            key = (segment.span_index, model, plan, segment.period)
            uplift[key] += extra
            uplift_segments[key].add(index)
            uplift_leases[key].append(LeaseRounding(lease_id, allocated, card.increment_ms, minimum))

    lines: list[InvoiceLine] = []

    def ranges(indices: set[int]) -> tuple[tuple[int, int], ...]:
        return tuple((ctx.segments[i].start_ms, ctx.segments[i].end_ms) for i in sorted(indices))

    def partial(span_index: int) -> str:
        lo, hi = ctx.span_range(span_index)
        if (lo, hi) == (ctx.service_start_ms, ctx.service_end_ms):
            return ""
        return f", {ms_to_iso(lo)}..{ms_to_iso(hi)}"

    for key in sorted(set(gpu_ms) | set(uplift)):
        span_index, model, plan, period = key
        card = ctx.spans[span_index].card
        lo, hi = ctx.span_range(span_index)
        ms = gpu_ms.get(key, 0)
        if ms < 0:
            raise PricingError(f"allocated GPU time of {model} / {plan} / {period} is negative ({ms} ms)")
        price = card.gpu_price(model, plan, period)
        what = f"{model_text(model)}, {plan}, {period}"
        if ms > 0:
            split = _tier_split(price, ms) if isinstance(price, Tiered) else [(0, ms, price)]
            bounds = [0, *_tier_bounds(price)] if isinstance(price, Tiered) else []
            for number, tier_ms, unit_price in split:
                tier = number if isinstance(price, Tiered) else None
                tier_text = f", tier {number} ({price.mode})" if isinstance(price, Tiered) else ""
                description = f"GPU time {what}{tier_text} ({card.label}{partial(span_index)})"
                segments = ranges(gpu_segments[key])
                basis = QuantityBasis()
                if isinstance(price, Tiered):
                    lower = bounds[number - 1]
                    basis = QuantityBasis("tier", price.mode, 0 if lower is None else lower, bounds[number])
                line = _gpu_line(ctx, key, "gpu_time", description, tier_ms, unit_price, tier, segments, basis)
                charged[key] += line.amount
                lines.append(line)
        extra = uplift.get(key, 0)
        if extra > 0:
            tier, unit_price = _marginal(price, ms)
            rule = f"{_seconds(card.increment_ms)} s increment, {_seconds(card.minimum_ms)} s minimum"
            description = f"GPU time rounding per lease ({rule}) {what} ({card.label}{partial(span_index)})"
            segments = ranges(uplift_segments[key])
            basis = QuantityBasis("lease_rounding", leases=tuple(uplift_leases[key]))
            lines.append(
                _gpu_line(ctx, key, "gpu_time_rounding", description, extra, unit_price, tier, segments, basis)
            )

    for (span_index, period), mj in sorted(energy.items()):
        card = ctx.spans[span_index].card
        if mj < 0:
            raise PricingError(f"energy in period {period} is negative ({mj} mJ)")
        if mj == 0 or not card.bills_energy:
            continue
        lo, hi = ctx.span_range(span_index)
        unit_price = card.energy_price(period)
        billed_kwh = _billed_kwh(card, mj)
        lines.append(
            InvoiceLine(
                kind="energy",
                description=f"Energy {period}, PUE {card.pue} ({card.label}{partial(span_index)})",
                service_start_ms=lo,
                service_end_ms=hi,
                card_name=card.name,
                card_version=card.version,
                plan="",
                model="",
                tou_period=period,
                quantity_base=mj,
                base_unit="mJ",
                quantity=round_half_even(billed_kwh, QUANTITY_PLACES),
                unit="kWh",
                unit_price=unit_price,
                amount=_energy_amount(card, period, mj, ctx.currency),
                tier=None,
                segments=ranges(energy_segments[(span_index, period)]),
            )
        )
    charged_energy = {
        (span_index, period): _energy_amount(ctx.spans[span_index].card, period, mj, ctx.currency)
        for (span_index, period), mj in energy.items()
        if mj > 0 and ctx.spans[span_index].card.bills_energy
    }
    for lease_id in sorted(apart_gpu):
        preempted = _preemption_line(
            ctx, preemptions[lease_id], apart_gpu[lease_id], apart_energy[lease_id], gpu_ms, charged, charged_energy
        )
        if preempted is not None:
            lines.append(preempted)
    return lines


def _preemption_line(
    ctx: _Context,
    preemption: Preemption,
    used: Mapping[tuple[int, str, str, str], int],
    used_energy: Mapping[tuple[int, str], int],
    pooled_ms: Mapping[tuple[int, str, str, str], int],
    charged: dict[tuple[int, str, str, str], Decimal],
    charged_energy: dict[tuple[int, str], Decimal],
) -> InvoiceLine | None:
    """The waiver or short-notice credit of one preempted lease (None when no rule applies). What the
    lease used is taken from what its lines still hold (`charged`, `charged_energy`, consumed here):
    the leases' own amounts, each rounded, never add up to more than the pooled lines charged."""
    card = ctx.spans[max(key[0] for key in used)].card
    ruled = preemption_rule(card.interruption, preemption)
    if ruled is None or card.interruption is None:
        return None
    rule, percent = ruled
    value = zero(ctx.currency)
    for key, ms in sorted(used.items()):
        span_index, model, plan, period = key
        _, unit_price = _marginal(ctx.spans[span_index].card.gpu_price(model, plan, period), pooled_ms[key])
        taken = min(_gpu_amount(ms, unit_price, ctx.currency), charged[key])
        charged[key] -= taken
        value += taken
    for (span_index, period), mj in sorted(used_energy.items()):
        span_card = ctx.spans[span_index].card
        if mj and span_card.bills_energy:
            taken = min(_energy_amount(span_card, period, mj, ctx.currency), charged_energy[(span_index, period)])
            charged_energy[(span_index, period)] -= taken
            value += taken
    rate = -percent.scaleb(-2)
    amount = -value if rule == "waiver" else round_money(Fraction(value) * Fraction(rate), ctx.currency)
    if amount == 0:
        return None
    terms = card.interruption
    if rule == "waiver":
        ran = preemption.ends_ms - preemption.lease_start_ms
        why = (
            f"waived: ended {_seconds(ran)} s after its start, free if preempted within "
            f"{_seconds(terms.free_within_ms)} s"
        )
    else:
        notice = preemption.ends_ms - preemption.noticed_ms
        why = (
            f"{_percent_text(percent.scaleb(-2))}% short-notice credit: {_seconds(notice)} s notice of "
            f"{_seconds(terms.notice_ms)} s promised"
        )
    _, model, plan, _ = min(used)
    description = f"Preempted by the owner, lease {preemption.lease_id}: {why} ({card.label})"
    return replace(_money_line(ctx, "preemption_credit", description, value, rate, amount), plan=plan, model=model)


def _sla_lines(ctx: _Context, lines: Sequence[InvoiceLine], health: Mapping[str, Availability]) -> list[InvoiceLine]:
    """One credit per plan whose availability is under its card's promise (see the module docstring)."""
    card = ctx.last_card
    out = []
    for plan, measured in sorted(health.items()):
        terms = card.sla.get(plan)
        available = availability(measured.leased_ms, measured.unhealthy_ms)
        percent = sla_credit_percent(terms, available)
        if terms is None or percent == 0:
            continue
        compute = ("gpu_time", "gpu_time_rounding", "preemption_credit")
        charge = sum((ln.amount for ln in lines if ln.plan == plan and ln.kind in compute), zero(ctx.currency))
        if charge <= 0:
            continue
        rate = -percent.scaleb(-2)
        amount = max(round_money(Fraction(charge) * Fraction(rate), ctx.currency), -charge)
        shown = round_half_even(available * 100, 3)
        description = (
            f"SLA credit {plan}: availability {shown}% against {terms.availability}% promised "
            f"({_hours(measured.unhealthy_ms)} of {_hours(measured.leased_ms)} leased GPU-hours unhealthy), "
            f"{percent}% of the plan's charge ({card.label})"
        )
        out.append(replace(_money_line(ctx, "sla_credit", description, charge, rate, amount), plan=plan))
    return out


def _money_line(
    ctx: _Context,
    kind: LineKind,
    description: str,
    quantity: Decimal,
    unit_price: Decimal,
    amount: Decimal,
) -> InvoiceLine:
    card = ctx.last_card
    return InvoiceLine(
        kind=kind,
        description=description,
        service_start_ms=ctx.service_start_ms,
        service_end_ms=ctx.service_end_ms,
        card_name=card.name,
        card_version=card.version,
        plan="",
        model="",
        tou_period="",
        quantity_base=0,
        base_unit="",
        quantity=quantity,
        unit="",
        unit_price=unit_price,
        amount=amount,
    )


def _pretax_lines(
    ctx: _Context,
    usage: Iterable[UsageQuantity],
    leases: Iterable[LeaseQuantity],
    preemptions: Mapping[str, Preemption],
    health: Mapping[str, Availability],
) -> list[InvoiceLine]:
    """Usage lines and the market's credits, then the discount and the commitment true-up of the last card."""
    lines = _usage_lines(ctx, usage, leases, preemptions)
    lines += _sla_lines(ctx, lines, health)
    card = ctx.last_card
    usage_total = sum((line.amount for line in lines), zero(ctx.currency))
    discount = zero(ctx.currency)
    if card.discount_percent and usage_total:
        rate = -card.discount_percent.scaleb(-2)
        discount = round_money(Fraction(usage_total) * Fraction(rate), ctx.currency)
        lines.append(
            _money_line(
                ctx, "discount", f"Discount {card.discount_percent}% ({card.label})", usage_total, rate, discount
            )
        )
    if card.commitment is not None and usage_total + discount < card.commitment:
        spend = usage_total + discount
        true_up = round_money(card.commitment - spend, ctx.currency)
        lines.append(
            _money_line(
                ctx,
                "commitment_true_up",
                f"Commitment true-up: committed {card.commitment} {ctx.currency}, used {spend} ({card.label})",
                ONE,
                true_up,
                true_up,
            )
        )
    return lines


def _sort_key(line: InvoiceLine) -> tuple[int, int, int, str, str, str, int]:
    return (
        KIND_ORDER.index(line.kind),
        line.service_start_ms,
        line.service_end_ms,
        line.model,
        line.plan,
        line.tou_period,
        line.tier or 0,
    )


def _period_text(start_ms: int, end_ms: int) -> str:
    day = MS_PER_DAY
    if start_ms % day == 0 and end_ms % day == 0:
        return f"{ms_to_iso(start_ms)[:10]}..{ms_to_iso(end_ms)[:10]}"
    return f"{ms_to_iso(start_ms)}..{ms_to_iso(end_ms)}"


# -- public ------------------------------------------------------------------------------------


def rate_tenant(
    *,
    tenant_id: str,
    usage: Iterable[UsageQuantity],
    leases: Iterable[LeaseQuantity],
    segments: Sequence[PricingSegment],
    spans: Sequence[CardSpan],
    tax_jurisdiction: str,
    credits: Iterable[CreditGrant] = (),
    service_start_ms: int,
    service_end_ms: int,
    corrections: Iterable[InvoiceLine] = (),
    preemptions: Mapping[str, Preemption] | None = None,
    health: Mapping[str, Availability] | None = None,
) -> RatedInvoice:
    """One tenant's invoice for [service_start_ms, service_end_ms). See the module docstring.
    `preemptions`: the tenant's leases the owner ended, by lease id; `health`: per plan, the leased
    and unhealthy GPU-ms of the period (the SLA)."""
    ctx = _context(tenant_id, segments, spans, service_start_ms, service_end_ms)
    currency = ctx.currency
    card = ctx.last_card
    tax_rate = card.tax_rate(tax_jurisdiction)  # looked up always: a missing rate is found at once
    lines = sorted(_pretax_lines(ctx, usage, leases, preemptions or {}, health or {}), key=_sort_key)
    corrected = sorted(corrections, key=_sort_key)
    for line in corrected:
        if line.kind not in PRETAX_KINDS:
            raise PricingError(f"a correction line cannot be of kind {line.kind!r}: {line.description}")
        to_minor(line.amount, currency)  # whole minor units (a stored NUMERIC may carry more zeros)
    lines.extend(replace(line, amount=round_money(line.amount, currency), correction=True) for line in corrected)
    subtotal = sum((line.amount for line in lines), zero(currency))
    tax = zero(currency)
    if lines:
        tax = round_money(Fraction(subtotal) * Fraction(tax_rate), currency)
        lines.append(
            _money_line(
                ctx, "tax", f"Tax {tax_jurisdiction} {_percent_text(tax_rate)}% ({card.label})", subtotal, tax_rate, tax
            )
        )
    total = subtotal + tax

    drawdowns: list[tuple[str, Decimal]] = []
    left = total
    usable = []
    for grant in credits:
        to_minor(grant.remaining, currency)  # refuses fractions of the minor unit
        if grant.remaining < 0:
            raise PricingError(f"credit {grant.credit_id}: remaining {grant.remaining} is negative")
        if grant.expires_at_ms is not None and grant.expires_at_ms <= service_end_ms:
            continue
        usable.append(grant)
    usable.sort(
        key=lambda g: (g.expires_at_ms is None, g.expires_at_ms or 0, g.granted_at_ms, g.credit_id),
    )
    for grant in usable:
        if left <= 0:
            break
        draw = round_money(min(grant.remaining, left), currency)
        if draw <= 0:
            continue
        left -= draw
        drawdowns.append((grant.credit_id, draw))
        expiry = "never expires" if grant.expires_at_ms is None else f"expires {ms_to_iso(grant.expires_at_ms)}"
        lines.append(
            _money_line(ctx, "credit", f"Prepaid credit {grant.credit_id} ({expiry})", ONE, -draw, -draw),
        )
    credits_applied = sum((draw for _, draw in drawdowns), zero(currency))
    return RatedInvoice(
        tenant_id=tenant_id,
        currency=currency,
        service_start_ms=service_start_ms,
        service_end_ms=service_end_ms,
        lines=lines,
        subtotal=subtotal,
        tax=tax,
        total=total,
        credits_applied=credits_applied,
        amount_due=total - credits_applied,
        credit_drawdowns=drawdowns,
    )


LineKey = tuple[str, int, int, str, int, str, str, str, int, str]


def line_key(line: InvoiceLine) -> LineKey:
    """What identifies a line across ratings of one period (a correction is the difference per key).
    The market's credits are one per lease (or plan) and rule, which their description names."""
    return (
        line.kind,
        line.service_start_ms,
        line.service_end_ms,
        line.card_name,
        line.card_version,
        line.plan,
        line.model,
        line.tou_period,
        line.tier or 0,
        _uncorrected(line) if line.kind in MARKET_CREDIT_KINDS else "",
    )


def _uncorrected(line: InvoiceLine) -> str:
    """A line's description without a correction's "Correction for <period>: " prefix."""
    if line.correction and line.description.startswith("Correction for "):
        return line.description.split(": ", 1)[1]
    return line.description


def rate_correction(
    *,
    tenant_id: str,
    usage: Iterable[UsageQuantity],
    leases: Iterable[LeaseQuantity],
    segments: Sequence[PricingSegment],
    spans: Sequence[CardSpan],
    service_start_ms: int,
    service_end_ms: int,
    billed: Iterable[InvoiceLine],
    preemptions: Mapping[str, Preemption] | None = None,
    health: Mapping[str, Availability] | None = None,
) -> list[InvoiceLine]:
    """Correction lines for an earlier period: re-rate its COMPLETE quantities and subtract what
    was billed (`billed`: that period's lines, any kinds; tax and credit lines are ignored).
    Empty when nothing changed. See the module docstring."""
    ctx = _context(tenant_id, segments, spans, service_start_ms, service_end_ms)
    fresh = {line_key(line): line for line in _pretax_lines(ctx, usage, leases, preemptions or {}, health or {})}
    before: dict[LineKey, list[InvoiceLine]] = defaultdict(list)
    for line in billed:
        if line.kind in PRETAX_KINDS:
            to_minor(line.amount, ctx.currency)  # a billed amount is whole minor units
            before[line_key(line)].append(line)
    prefix = f"Correction for {_period_text(service_start_ms, service_end_ms)}: "
    out: list[InvoiceLine] = []
    for key in sorted(set(fresh) | set(before)):
        old = before.get(key, [])
        new = fresh.get(key)
        old_amount = sum((line.amount for line in old), zero(ctx.currency))
        old_base = sum(line.quantity_base for line in old)
        old_quantity = sum((line.quantity for line in old), Decimal(0))
        amount = round_money((new.amount if new else zero(ctx.currency)) - old_amount, ctx.currency)
        base = (new.quantity_base if new else 0) - old_base
        if amount == 0 and base == 0:
            continue
        model = new if new is not None else min(old, key=lambda line: (line.correction, line.description))
        description = _uncorrected(model)
        if model.kind == "commitment_true_up":
            quantity, unit_price = ONE, amount
        else:
            delta = (new.quantity if new else Decimal(0)) - old_quantity
            # quantities were rounded to 6 places (money bases to the minor unit): the difference is exact
            places = QUANTITY_PLACES if model.kind in USAGE_KINDS else minor_units(ctx.currency)
            quantity = round_half_even(delta, places)
            unit_price = model.unit_price
        out.append(
            replace(
                model,
                description=prefix + description,
                quantity_base=base,
                quantity=quantity,
                unit_price=unit_price,
                amount=amount,
                correction=True,
            )
        )
    return sorted(out, key=_sort_key)
