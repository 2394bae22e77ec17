"""Pure: the arithmetic that decides every difference between metered, invoiced and collected.

No SQL, DuckDB, Stripe or clock here: the service hands in plain facts (quantities summed from the
Parquet, the stored invoice, the leases, what Stripe holds) and gets back `Item`s, each a step with
a named cause or an unexplained difference with a one-line message naming tenant, document and
line. Money is `Fraction` (exact, unrounded values) or `Decimal` (stored, rounded amounts); never
a float.

Three legs per tenant and period P:

- quantity: leased GPU-ms (the ledger's leases clipped to P and to now) against metered allocated
  GPU-ms (every Parquet record of P known now), per lease. Leased more than metered is "leased
  but unmetered time"; metered more than leased, or metered on a lease the ledger does not hold
  for the tenant, is unexplained.
- money: a waterfall from the exact value of ALL usage of P at the invoice's prices to the stored
  `amount_due`: minus late usage (usage of P the invoice did not count, per document that took it
  or "not yet invoiced"), plus the lease increment and minimum, minus the owner's preemptions
  waived or credited and SLA credits (each its own step, per line), discount, commitment true-up,
  corrections of earlier periods, tax, minus credits, plus rounding (each line within half a minor
  unit of its exact value); whatever is left is unexplained. Beside it, the invoice is re-rated
  from what it counted with the pure rating core and compared line by line, and every later
  document that took late usage of P (a correction on a later invoice, a credit note) is re-rated
  with `rate_correction` and compared line by line.
- collected: what Stripe holds for the pushed invoice, line by line (matched by
  `wattmeter_line_position`), its total, then amount paid and the rest named by payment state.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction

from billing.payments.documents import META_INVOICE, META_POSITION
from billing.pricing.errors import PricingError
from billing.pricing.lines import InvoiceLine
from billing.pricing.market_terms import Availability, Preemption
from billing.pricing.money import from_minor, minor_units, round_half_even, to_minor
from billing.pricing.rating import (
    CreditGrant,
    LeaseQuantity,
    RatedInvoice,
    UsageQuantity,
    rate_correction,
    rate_tenant,
)
from billing.pricing.segments import CardSpan, PricingSegment
from schemas.units import MJ_PER_KWH, MS_PER_HOUR

LEG_QUANTITY = "quantity"
LEG_MONEY = "money"
LEG_COLLECTED = "collected"

# quantity leg
LEASED = "leased GPU time"
METERED_TIME = "metered GPU time"
UNMETERED = "leased but unmetered time"
ATTRIBUTED = "metered as idle, billed to the lease"  # a check row: the ledger's lease reached the worker late
# money leg
METERED = "metered value"
LATE = "late usage carried forward"
LEASE_ROUNDING = "lease increment and minimum"
DISCOUNT = "discount"
TRUE_UP = "commitment true-up"
PREEMPTED = "preempted by the owner: waived or credited"
SLA_CREDIT = "SLA credit"
CORRECTIONS_IN = "corrections of earlier periods"
TAX = "tax"
CREDITS = "credits"
ROUNDING = "rounding"
INVOICED = "invoiced amount due"
# collected leg
CREDIT_NOTES = "credit notes"
NOT_YET_PAID = "not yet paid"
PAYMENT_FAILED = "payment failed"
UNCOLLECTIBLE = "uncollectible"
VOIDED = "void in Stripe"
COLLECTED = "collected"
UNEXPLAINED = "unexplained"

_OUTSTANDING = {
    "open": NOT_YET_PAID,
    "draft": NOT_YET_PAID,
    "failed": PAYMENT_FAILED,
    "uncollectible": UNCOLLECTIBLE,
    "void": VOIDED,
}


ROLE_ANCHOR = "anchor"  # a leg's start or end: leased / metered GPU time, metered value, amount due, collected
ROLE_STEP = "step"  # a difference on the way from the leg's first anchor to its last (they sum exactly)
ROLE_CHECK = "check"  # a line-level finding beside the chain (a re-rated line, a Stripe line)


@dataclass(frozen=True)
class Item:
    """One row of a tenant's reconciliation. In each leg the first anchor plus the steps equals the
    last anchor, exactly (amounts for money, `quantity_ms` for the quantity leg; a step is signed in
    that direction). A row with `explained` False is unexplained and has a one-line `message`."""

    leg: str
    cause: str
    amount: Fraction | None = None  # money, exact; None for a quantity row
    quantity_ms: int | None = None  # GPU-ms behind the row, when there is one
    detail: str = ""
    explained: bool = True
    message: str = ""
    role: str = ROLE_STEP


@dataclass(frozen=True)
class StoredInvoice:
    invoice_id: int
    number: str | None
    tenant_id: str
    period: str
    status: str
    currency: str
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    credits_applied: Decimal
    amount_due: Decimal
    lines: tuple[InvoiceLine, ...]

    @property
    def label(self) -> str:
        return self.number or f"draft #{self.invoice_id}"


@dataclass(frozen=True)
class Quantities:
    """Usage summed from the Parquet for one tenant and period (any multiset of rows)."""

    usage: tuple[UsageQuantity, ...] = ()
    leases: tuple[LeaseQuantity, ...] = ()

    def __add__(self, other: Quantities) -> Quantities:
        return Quantities(self.usage + other.usage, self.leases + other.leases)

    @property
    def allocated_ms(self) -> int:
        return sum(row.allocated_gpu_ms for row in self.usage)


@dataclass(frozen=True)
class Destination:
    """A document that took late usage of the period: correction lines on a later invoice, or a
    credit note. `lines` are its lines for the period; `quantities` the usage of its offset ranges."""

    label: str  # "correction lines on WM-000004", "credit note WM-CN-000001", "correction lines on draft #7"
    document: str  # the number (or "draft #7")
    credit_note: bool
    quantities: Quantities
    lines: tuple[InvoiceLine, ...]
    amount: Decimal | None = None  # a credit note's amount (positive: what it credits)


@dataclass(frozen=True)
class Drawdown:
    credit_id: str
    amount: Decimal
    expires_ms: int | None
    granted_ms: int


@dataclass(frozen=True)
class PeriodPricing:
    """How the period is priced for one tenant: what the invoicing service rates it with."""

    tenant_id: str
    period: str
    currency: str
    tax_jurisdiction: str
    start_ms: int
    end_ms: int
    spans: tuple[CardSpan, ...]
    segments: tuple[PricingSegment, ...]
    preemptions: Mapping[str, Preemption] = field(default_factory=dict)  # the tenant's leases the owner ended
    health: Mapping[str, Availability] = field(default_factory=dict)  # per plan: leased and unhealthy GPU-ms


@dataclass(frozen=True)
class LeasedTime:
    """A ledger lease of the tenant, clipped to the period and to now."""

    lease_id: str
    gpu_uuid: str
    plan: str
    leased_ms: int


@dataclass(frozen=True)
class StripeLine:
    line_id: str
    amount: int  # minor units
    metadata: Mapping[str, str]
    invoice_item: str | None
    description: str = ""


@dataclass(frozen=True)
class StripeView:
    """What Stripe holds for one pushed invoice (amounts in minor units)."""

    invoice_id: str
    status: str  # draft | open | paid | uncollectible | void
    currency: str
    total: int
    amount_paid: int
    metadata: Mapping[str, str]
    lines: tuple[StripeLine, ...]


@dataclass(frozen=True)
class PaymentFacts:
    """The collected leg's inputs: the sync row (wattmeter's mirror of Stripe's webhooks), what Stripe
    holds (None: Stripe not consulted), and the credit notes issued against the invoice."""

    mirror_status: str | None
    mirror_paid: Decimal | None
    stripe_items: Mapping[str, str]  # line position -> Stripe invoice item id, as recorded by the push
    stripe: StripeView | None
    credit_notes: tuple[tuple[str, Decimal], ...] = ()  # (number, amount) against this invoice


# -- numbers -----------------------------------------------------------------------------------


def half_unit(currency: str) -> Fraction:
    return Fraction(1, 2 * 10 ** minor_units(currency))


def fraction_text(value: Fraction, places: int = 12) -> str:
    """Exact decimal text when the value has one (its denominator divides a power of ten), else
    rounded half to even to `places` decimals."""
    denominator = value.denominator
    exponent = 0
    while denominator % 10 == 0:
        denominator //= 10
        exponent += 1
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator == 1:
        digits = exponent + max(twos, fives)
        text = format(round_half_even(value, digits), "f")
    else:
        text = format(round_half_even(value, places), "f")
    return text


def money_text(value: Fraction | Decimal, currency: str) -> str:
    """An amount for a message: at least the currency's places, more when it has more."""
    exact = Fraction(value)
    places = minor_units(currency)
    rounded = Fraction(round_half_even(exact, places))
    return format(round_half_even(exact, places), "f") if rounded == exact else fraction_text(exact)


def gpu_hours_text(ms: int) -> str:
    return format(round_half_even(Fraction(ms, MS_PER_HOUR), 6), "f")


def _pue_of(spans: Sequence[CardSpan]) -> dict[tuple[str, int], Fraction]:
    return {(span.card.name, span.card.version): Fraction(span.card.pue) for span in spans}


def exact_value(line: InvoiceLine, pue: Mapping[tuple[str, int], Fraction]) -> Fraction:
    """The unrounded value of a line: what its amount is the rounding of.

    gpu_time and its rounding: GPU-ms x price per GPU-hour; energy: mJ / 3.6e9 x PUE x price per
    kWh; discount and tax: base x rate; a correction, a true-up, a credit: the amount itself (a
    difference of rounded amounts, a whole-minor-unit commitment minus rounded spend, a drawdown).
    """
    if line.correction:
        return Fraction(line.amount)
    if line.kind in ("gpu_time", "gpu_time_rounding"):
        return Fraction(line.quantity_base) * Fraction(line.unit_price) / MS_PER_HOUR
    if line.kind == "energy":
        factor = pue.get((line.card_name, line.card_version))
        if factor is None:  # no card of the period: the stored kWh (after PUE) is all there is
            return Fraction(line.quantity) * Fraction(line.unit_price)
        return Fraction(line.quantity_base, MJ_PER_KWH) * factor * Fraction(line.unit_price)
    if line.kind in ("discount", "tax"):
        return Fraction(line.quantity) * Fraction(line.unit_price)
    return Fraction(line.amount)


# -- quantity leg ------------------------------------------------------------------------------


def metered_per_lease(quantities: Quantities) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in quantities.leases:
        out[row.lease_id] = out.get(row.lease_id, 0) + row.allocated_gpu_ms
    return out


def quantity_leg(
    tenant_id: str,
    invoice_label: str,
    leased: Sequence[LeasedTime],
    metered: Mapping[str, int],
    owners: Mapping[str, str],
    attributed: Mapping[str, int] | None = None,
    unbilled: Mapping[str, int] | None = None,
) -> list[Item]:
    """Leased -> metered GPU-ms, per lease. `owners`: lease id -> the tenant the ledger gives a
    metered lease that is not among `leased` (absent: the ledger does not hold it at all).
    `attributed`: lease id -> GPU-ms the worker metered as idle that bill to the lease (part of
    `metered`, shown beside the chain). `unbilled`: lease id -> those of them the invoice cannot hold,
    because the lease reached the ledger after the invoice was rated: leased time not billed."""
    attributed = attributed or {}
    unbilled = unbilled or {}
    items = [
        Item(
            LEG_QUANTITY,
            LEASED,
            quantity_ms=sum(lease.leased_ms for lease in leased),
            role=ROLE_ANCHOR,
            detail=f"{len(leased)} lease(s) in the ledger, clipped to the period and to now",
        ),
    ]
    held = {lease.lease_id for lease in leased}
    for lease in sorted(leased, key=lambda lease: lease.lease_id):
        used = metered.get(lease.lease_id, 0)
        gap = lease.leased_ms - used
        what = f"lease {lease.lease_id} (GPU {lease.gpu_uuid}, {lease.plan})"
        late = attributed.get(lease.lease_id, 0)
        if unbilled.get(lease.lease_id):
            message = (
                f"tenant {tenant_id}, invoice {invoice_label}, {what}: {gpu_hours_text(unbilled[lease.lease_id])} "
                "GPU-h metered as idle inside the lease are not on the invoice (the lease reached the ledger "
                "after the invoice was rated)"
            )
            items.append(
                Item(
                    LEG_QUANTITY,
                    UNEXPLAINED,
                    quantity_ms=unbilled[lease.lease_id],
                    role=ROLE_CHECK,
                    detail=f"{what}: leased time metered as idle, not billed",
                    explained=False,
                    message=message,
                )
            )
        elif late:
            items.append(
                Item(
                    LEG_QUANTITY,
                    ATTRIBUTED,
                    quantity_ms=late,
                    role=ROLE_CHECK,
                    detail=f"{what}: {gpu_hours_text(late)} GPU-h metered as idle (the lease reached the "
                    "worker after its samples), billed to the lease",
                )
            )
        if gap > 0:
            items.append(
                Item(
                    LEG_QUANTITY,
                    UNMETERED,
                    quantity_ms=-gap,
                    detail=f"{what}: leased {gpu_hours_text(lease.leased_ms)} GPU-h, metered "
                    f"{gpu_hours_text(used)}: {gpu_hours_text(gap)} GPU-h leased but unmetered",
                )
            )
        elif gap < 0:
            message = (
                f"tenant {tenant_id}, invoice {invoice_label}, {what}: metered {gpu_hours_text(used)} GPU-h, "
                f"more than the {gpu_hours_text(lease.leased_ms)} GPU-h leased"
            )
            items.append(
                Item(
                    LEG_QUANTITY,
                    UNEXPLAINED,
                    quantity_ms=-gap,
                    detail=f"{what}: metered more than leased",
                    explained=False,
                    message=message,
                )
            )
    for lease_id in sorted(set(metered) - held):
        used = metered[lease_id]
        if used == 0:
            continue
        owner = owners.get(lease_id)
        why = "which the ledger does not hold" if owner is None else f"which the ledger gives to tenant {owner}"
        message = (
            f"tenant {tenant_id}, invoice {invoice_label}, lease {lease_id}: metered {gpu_hours_text(used)} "
            f"GPU-h on a lease {why} in this period"
        )
        items.append(
            Item(
                LEG_QUANTITY,
                UNEXPLAINED,
                quantity_ms=used,
                detail=f"lease {lease_id}: {why}",
                explained=False,
                message=message,
            )
        )
    items.append(
        Item(
            LEG_QUANTITY,
            METERED_TIME,
            quantity_ms=sum(metered.values()),
            role=ROLE_ANCHOR,
            detail="allocated GPU time of every usage record of the period in the Parquet now",
        )
    )
    return items


# -- money leg ---------------------------------------------------------------------------------


def _with_starts(leases: Iterable[LeaseQuantity], starts: Mapping[str, int]) -> list[LeaseQuantity]:
    """Leases with their start from the ledger (a lease's minimum is charged in the period it starts)."""
    return [replace(row, lease_start_ms=starts.get(row.lease_id)) for row in leases]


def split_unpriced(pricing: PeriodPricing, quantities: Quantities) -> tuple[Quantities, Quantities]:
    """(rows in a pricing segment, rows in none: usage of the period with no rate card in effect)."""
    starts = [segment.start_ms for segment in pricing.segments]

    def priced(ts_ms: int) -> bool:
        index = bisect_right(starts, ts_ms) - 1
        return index >= 0 and ts_ms < pricing.segments[index].end_ms

    return (
        Quantities(
            tuple(r for r in quantities.usage if priced(r.segment_start_ms)),
            tuple(r for r in quantities.leases if priced(r.last_segment_start_ms)),
        ),
        Quantities(
            tuple(r for r in quantities.usage if not priced(r.segment_start_ms)),
            tuple(r for r in quantities.leases if not priced(r.last_segment_start_ms)),
        ),
    )


def usage_value(pricing: PeriodPricing, quantities: Quantities) -> Fraction:
    """The exact value of usage at the period's prices: its GPU time and energy lines, unrounded
    (no lease increment or minimum, no discount, no tax)."""
    if not quantities.usage:
        return Fraction(0)
    rated = rate_tenant(
        tenant_id=pricing.tenant_id,
        usage=quantities.usage,
        leases=(),
        segments=pricing.segments,
        spans=pricing.spans,
        tax_jurisdiction=pricing.tax_jurisdiction,
        service_start_ms=pricing.start_ms,
        service_end_ms=pricing.end_ms,
    )
    pue = _pue_of(pricing.spans)
    return sum((exact_value(line, pue) for line in rated.lines if line.kind in ("gpu_time", "energy")), Fraction(0))


def _differences(stored: InvoiceLine, expected: InvoiceLine) -> list[str]:
    out = []
    if stored.kind != expected.kind:
        out.append(f"kind {expected.kind}")
    if stored.quantity_base != expected.quantity_base:
        out.append(f"quantity {expected.quantity_base} {expected.base_unit} (stored {stored.quantity_base})")
    if stored.unit_price != expected.unit_price:
        out.append(f"unit price {expected.unit_price} (stored {stored.unit_price})")
    return out


@dataclass(frozen=True)
class LineProblem:
    position: int
    kind: str
    difference: Fraction  # stored - expected amount
    message: str


def compare_lines(
    tenant_id: str,
    document: str,
    stored: Sequence[InvoiceLine],
    expected: Sequence[InvoiceLine],
    currency: str,
    what: str = "",
) -> list[LineProblem]:
    """Stored lines against re-rated ones, in order: one problem for each line that differs in kind,
    quantity, unit price or amount, or that is missing or extra."""
    problems = []
    prefix = f"tenant {tenant_id}, {document}"
    ordered = sorted(stored, key=lambda line: line.position)
    for index in range(max(len(ordered), len(expected))):
        have = ordered[index] if index < len(ordered) else None
        want = expected[index] if index < len(expected) else None
        if have is not None and want is not None:
            others = _differences(have, want)
            if have.amount == want.amount and not others:
                continue
            extra = f" ({'; '.join(others)})" if others else ""
            problems.append(
                LineProblem(
                    have.position,
                    have.kind,
                    Fraction(have.amount - want.amount),
                    f"{prefix}, line {have.position} ({have.kind}){what}: stored {money_text(have.amount, currency)}, "
                    f"Parquet and rate card give {money_text(want.amount, currency)}{extra}",
                )
            )
        elif have is not None:
            problems.append(
                LineProblem(
                    have.position,
                    have.kind,
                    Fraction(have.amount),
                    f"{prefix}, line {have.position} ({have.kind}){what}: stored {money_text(have.amount, currency)}, "
                    "Parquet and rate card give no such line",
                )
            )
        elif want is not None:
            position = (ordered[-1].position + 1 + index - len(ordered)) if ordered else index
            problems.append(
                LineProblem(
                    position,
                    want.kind,
                    -Fraction(want.amount),
                    f"{prefix}, line {position} ({want.kind}){what}: missing, Parquet and rate card give "
                    f"{money_text(want.amount, currency)}",
                )
            )
    return problems


def _grants(drawdowns: Sequence[Drawdown]) -> list[CreditGrant]:
    """Credits as grants equal to what the invoice drew (drawn in the same order: expiry, grant time, id)."""
    merged: dict[str, Drawdown] = {}
    for draw in drawdowns:
        held = merged.get(draw.credit_id)
        merged[draw.credit_id] = (
            draw
            if held is None
            else Drawdown(draw.credit_id, held.amount + draw.amount, draw.expires_ms, draw.granted_ms)
        )
    return [CreditGrant(d.credit_id, d.amount, d.expires_ms, d.granted_ms) for d in merged.values()]


@dataclass
class MoneyLeg:
    items: list[Item]
    metered: Fraction


def money_leg(
    pricing: PeriodPricing,
    invoice: StoredInvoice,
    complete: Quantities,
    counted: Quantities,
    destinations: Sequence[Destination],
    lease_starts: Mapping[str, int],
    drawdowns: Sequence[Drawdown],
) -> MoneyLeg:
    """The waterfall from the metered value of the period to the invoice's amount_due, and the
    line-level checks of the invoice and of every document that took late usage of the period.

    `complete`: every usage record of the period known now; `counted`: those of the invoice's own
    offset ranges; `destinations`: the later documents that took the rest, in the order they took
    it (their ranges chain); `lease_starts`: lease id -> start in the ledger; `drawdowns`: what the
    invoice drew from each credit grant."""
    tenant, currency, period = pricing.tenant_id, invoice.currency, pricing.period
    label = invoice.label
    items: list[Item] = []
    pue = _pue_of(pricing.spans)

    def add(cause: str, amount: Fraction | None, detail: str, quantity_ms: int | None = None) -> None:
        items.append(Item(LEG_MONEY, cause, amount, quantity_ms, detail))

    def unexplained(
        amount: Fraction | None, detail: str, message: str, role: str = ROLE_STEP, quantity_ms: int | None = None
    ) -> None:
        items.append(Item(LEG_MONEY, UNEXPLAINED, amount, quantity_ms, detail, False, message, role))

    # 1. metered: every usage record of P known now, at the invoice's prices, unrounded
    priced, unpriced = split_unpriced(pricing, complete)
    if unpriced.usage:
        unexplained(
            None,
            "usage of the period where no rate card is in effect",
            f"tenant {tenant}, invoice {label}: {gpu_hours_text(unpriced.allocated_ms)} GPU-h of usage of "
            f"{period} lie where no rate card is in effect (never billed)",
            ROLE_CHECK,
            unpriced.allocated_ms,
        )
    try:
        metered = usage_value(pricing, priced)
    except PricingError as exc:
        unexplained(
            None,
            "the usage of the period cannot be priced",
            f"tenant {tenant}, invoice {label}: the usage of {period} cannot be priced: {exc}",
            ROLE_CHECK,
        )
        metered = Fraction(0)
    items.append(
        Item(
            LEG_MONEY,
            METERED,
            metered,
            priced.allocated_ms,
            "every usage record of the period in the Parquet now, at the invoice's prices, unrounded",
            role=ROLE_ANCHOR,
        )
    )

    # 2. late usage: each later document that took some, in the order they took it, then the rest
    billed = [line for line in invoice.lines if line.service_period == period]
    so_far = counted
    try:
        counted_value = usage_value(pricing, counted)
    except PricingError as exc:
        unexplained(
            None,
            "the invoice's usage cannot be priced",
            f"tenant {tenant}, invoice {label}: the usage it counted cannot be priced: {exc}",
            ROLE_CHECK,
        )
        counted_value = Fraction(0)
    before = counted_value
    for destination in destinations:
        so_far = so_far + destination.quantities
        kind = "credit note" if destination.credit_note else "invoice"
        try:
            value = usage_value(pricing, so_far)
            expected = rate_correction(
                tenant_id=tenant,
                usage=so_far.usage,
                leases=_with_starts(so_far.leases, lease_starts),
                segments=pricing.segments,
                spans=pricing.spans,
                service_start_ms=pricing.start_ms,
                service_end_ms=pricing.end_ms,
                billed=billed,
                preemptions=pricing.preemptions,
                health=pricing.health,
            )
        except PricingError as exc:
            unexplained(
                None,
                f"late usage taken by {destination.document} cannot be priced",
                f"tenant {tenant}, {kind} {destination.document}: the late usage of {period} it took cannot "
                f"be priced: {exc}",
                ROLE_CHECK,
            )
            value, expected = before, []
        add(LATE, before - value, f"to {destination.label}", -destination.quantities.allocated_ms)
        for problem in compare_lines(
            tenant,
            f"{kind} {destination.document}",
            destination.lines,
            expected,
            currency,
            f", correction for {period}",
        ):
            unexplained(
                problem.difference,
                f"{destination.document} line {problem.position}: correction for {period}",
                problem.message,
                ROLE_CHECK,
            )
        if destination.credit_note and destination.amount is not None:
            owed = -sum((line.amount for line in expected), Decimal(0))
            if owed != destination.amount:
                unexplained(
                    Fraction(destination.amount - owed),
                    f"credit note {destination.document} amount",
                    f"tenant {tenant}, credit note {destination.document}, amount: stored "
                    f"{money_text(destination.amount, currency)}, Parquet and rate card give "
                    f"{money_text(owed, currency)}",
                    ROLE_CHECK,
                )
        billed += [line for line in destination.lines]
        before = value
    rest_ms = priced.allocated_ms - so_far.allocated_ms
    if metered != before or rest_ms:
        add(LATE, before - metered, "not yet invoiced (no document has counted it yet)", -rest_ms)

    # 3. the invoice re-rated from what it counted, compared line by line and in its totals
    rated: RatedInvoice | None = None
    problems: dict[int, LineProblem] = {}
    try:
        rated = rate_tenant(
            tenant_id=tenant,
            usage=counted.usage,
            leases=_with_starts(counted.leases, lease_starts),
            segments=pricing.segments,
            spans=pricing.spans,
            tax_jurisdiction=pricing.tax_jurisdiction,
            credits=_grants(drawdowns),
            service_start_ms=pricing.start_ms,
            service_end_ms=pricing.end_ms,
            corrections=[line for line in invoice.lines if line.correction],
            preemptions=pricing.preemptions,
            health=pricing.health,
        )
    except PricingError as exc:
        unexplained(
            None,
            "the invoice cannot be re-rated",
            f"tenant {tenant}, invoice {label}: cannot be re-rated from the Parquet: {exc}",
            ROLE_CHECK,
        )
    if rated is not None:
        problems = {
            p.position: p for p in compare_lines(tenant, f"invoice {label}", invoice.lines, rated.lines, currency)
        }
    for problem in problems.values():
        unexplained(
            problem.difference,
            f"line {problem.position} ({problem.kind}) differs from the re-rated line",
            problem.message,
            ROLE_CHECK,
        )

    # 4. from the usage the invoice counted to amount_due, by its stored lines
    own = [line for line in invoice.lines if not line.correction]
    stored_usage = sum((exact_value(line, pue) for line in own if line.kind in ("gpu_time", "energy")), Fraction(0))
    if stored_usage != counted_value:
        unexplained(
            stored_usage - counted_value,
            "the GPU time and energy lines differ from the usage the invoice counted",
            ""
            if problems
            else f"tenant {tenant}, invoice {label}: its GPU time and energy lines "
            f"are worth {fraction_text(stored_usage)}, the usage it counted {fraction_text(counted_value)}",
        )
    for line in own:
        if line.kind == "gpu_time_rounding":
            add(
                LEASE_ROUNDING,
                exact_value(line, pue),
                f"line {line.position}: GPU time billed beyond what was metered: {line.description}",
                line.quantity_base,
            )
        elif line.kind == "preemption_credit":
            add(PREEMPTED, Fraction(line.amount), f"line {line.position}: {line.description}")
        elif line.kind == "sla_credit":
            add(SLA_CREDIT, Fraction(line.amount), f"line {line.position}: {line.description}")
        elif line.kind == "discount":
            add(DISCOUNT, exact_value(line, pue), f"line {line.position}: {line.description}")
        elif line.kind == "commitment_true_up":
            add(TRUE_UP, exact_value(line, pue), f"line {line.position}: {line.description}")
    carried: dict[str, list[InvoiceLine]] = {}
    for line in invoice.lines:
        if line.correction:
            carried.setdefault(line.service_period, []).append(line)
    for service_period, lines in sorted(carried.items()):
        positions = ", ".join(str(line.position) for line in lines)
        add(
            CORRECTIONS_IN,
            sum((Fraction(line.amount) for line in lines), Fraction(0)),
            f"late usage of {service_period} (lines {positions}; checked when {service_period} is reconciled)",
            sum(line.quantity_base for line in lines if line.base_unit == "ms"),
        )
    for line in own:
        if line.kind == "tax":
            add(TAX, exact_value(line, pue), f"line {line.position}: {line.description}")
    drawn: dict[str, Decimal] = {}
    for draw in drawdowns:
        drawn[draw.credit_id] = drawn.get(draw.credit_id, Decimal(0)) + draw.amount
    recorded = ", ".join(f"{credit_id} {amount}" for credit_id, amount in sorted(drawn.items())) or "none"
    for line in own:
        if line.kind == "credit":
            add(CREDITS, Fraction(line.amount), f"line {line.position}: {line.description} (drawdowns: {recorded})")
    rounding = Fraction(0)
    half = half_unit(currency)
    for line in sorted(own, key=lambda line: line.position):
        if line.kind not in ("gpu_time", "gpu_time_rounding", "energy", "discount", "tax"):
            continue
        exact = exact_value(line, pue)
        difference = Fraction(line.amount) - exact
        if abs(difference) <= half:
            rounding += difference
            continue
        message = (
            ""
            if line.position in problems
            else (
                f"tenant {tenant}, invoice {label}, line {line.position} ({line.kind}): stored "
                f"{money_text(line.amount, currency)}, its own quantity and price give "
                f"{fraction_text(exact)}, more than "
                "half a minor unit away"
            )
        )
        unexplained(
            difference, f"line {line.position} ({line.kind}): more than half a minor unit off its exact value", message
        )
    add(ROUNDING, rounding, "each line rounded once to the minor unit, half to even, within half a minor unit")
    stored_sum = sum((line.amount for line in invoice.lines), Decimal(0))
    totals: list[str] = []
    if rated is not None:
        totals = [
            f"{name} stored {money_text(have, currency)}, Parquet and rate card give {money_text(want, currency)}"
            for name, have, want in (
                ("subtotal", invoice.subtotal, rated.subtotal),
                ("tax", invoice.tax, rated.tax),
                ("total", invoice.total, rated.total),
                ("credits_applied", invoice.credits_applied, rated.credits_applied),
                ("amount_due", invoice.amount_due, rated.amount_due),
            )
            if have != want
        ]
    if stored_sum != invoice.amount_due:
        totals.append(f"the lines sum to {money_text(stored_sum, currency)}")
    if totals and (not problems or any(not t.startswith("the lines sum") for t in totals)):
        message = f"tenant {tenant}, invoice {label}, totals: {'; '.join(totals)}"
    else:
        message = ""
    if stored_sum != invoice.amount_due:
        unexplained(Fraction(invoice.amount_due - stored_sum), "amount_due is not the sum of the lines", message)
    elif message:
        unexplained(None, "totals differ from the re-rated invoice", message, ROLE_CHECK)

    # 5. whatever the steps do not reach (nothing, when the arithmetic holds), then the anchor
    reached = metered + sum((i.amount for i in items if i.role == ROLE_STEP and i.amount is not None), Fraction(0))
    if reached != invoice.amount_due:
        left = Fraction(invoice.amount_due) - reached
        unexplained(
            left,
            "left between metered and invoiced",
            f"tenant {tenant}, invoice {label}: {fraction_text(left)} {currency} left between metered and invoiced",
        )
    items.append(
        Item(
            LEG_MONEY,
            INVOICED,
            Fraction(invoice.amount_due),
            None,
            f"invoice {label}: subtotal "
            f"{invoice.subtotal}, tax {invoice.tax}, total {invoice.total}, credits {invoice.credits_applied}",
            role=ROLE_ANCHOR,
        )
    )
    return MoneyLeg(items, metered)


# -- collected leg -----------------------------------------------------------------------------


@dataclass
class CollectedLeg:
    items: list[Item]
    collected: Decimal


def collected_leg(tenant_id: str, invoice: StoredInvoice, facts: PaymentFacts) -> CollectedLeg:
    """Stripe's invoice against wattmeter's, line by line and in total; then amount due -> credit
    notes -> outstanding (named by the payment state) -> collected."""
    currency, label = invoice.currency, invoice.label
    prefix = f"tenant {tenant_id}, invoice {label}"
    items = [Item(LEG_COLLECTED, INVOICED, Fraction(invoice.amount_due), None, f"invoice {label}", role=ROLE_ANCHOR)]

    def unexplained(amount: Fraction | None, detail: str, message: str, role: str = ROLE_CHECK) -> None:
        items.append(Item(LEG_COLLECTED, UNEXPLAINED, amount, None, detail, False, message, role))

    view = facts.stripe
    status = facts.mirror_status or "open"
    paid = facts.mirror_paid or Decimal(0)
    if view is not None:
        if view.metadata.get(META_INVOICE) != str(invoice.invoice_id):
            unexplained(
                None,
                f"Stripe invoice {view.invoice_id} metadata",
                f"{prefix}: Stripe invoice {view.invoice_id} carries {META_INVOICE}="
                f"{view.metadata.get(META_INVOICE)!r}, not {invoice.invoice_id}",
            )
        if view.currency.upper() != currency.upper():
            unexplained(
                None,
                f"Stripe invoice {view.invoice_id} currency",
                f"{prefix}: Stripe invoice {view.invoice_id} is in {view.currency.upper()}, not {currency}",
            )
        by_item = {item_id: position for position, item_id in facts.stripe_items.items()}
        lines = {line.position: line for line in invoice.lines}
        seen: dict[int, StripeLine] = {}
        for stripe_line in view.lines:
            position_text: str | None = None
            if stripe_line.metadata.get(META_INVOICE) == str(invoice.invoice_id):
                position_text = stripe_line.metadata.get(META_POSITION)
            elif stripe_line.invoice_item is not None and stripe_line.invoice_item in by_item:
                position_text = by_item[stripe_line.invoice_item]
            amount = from_minor(stripe_line.amount, currency)
            ref = stripe_line.line_id + (f" (item {stripe_line.invoice_item})" if stripe_line.invoice_item else "")
            if position_text is None or not position_text.isdigit() or int(position_text) not in lines:
                why = (
                    "is not from wattmeter (no wattmeter metadata)"
                    if position_text is None
                    else f"names line {position_text}, which the invoice does not have"
                )
                said = f" {stripe_line.description!r}" if stripe_line.description else ""
                unexplained(
                    Fraction(amount),
                    f"Stripe line {ref}",
                    f"{prefix}, Stripe line {ref}{said}: {money_text(amount, currency)} {why}",
                )
                continue
            position = int(position_text)
            if position in seen:
                unexplained(
                    Fraction(amount),
                    f"Stripe line {ref}",
                    f"{prefix}, line {position}: a second Stripe line {ref} of {money_text(amount, currency)} "
                    f"(the first is {seen[position].line_id})",
                )
                continue
            seen[position] = stripe_line
            line = lines[position]
            if to_minor(line.amount, currency) != stripe_line.amount:
                unexplained(
                    Fraction(amount - line.amount),
                    f"line {position} in Stripe",
                    f"{prefix}, line {position} ({line.kind}): Stripe line {ref} has "
                    f"{money_text(amount, currency)}, wattmeter {money_text(line.amount, currency)}",
                )
        for position, line in sorted(lines.items()):
            if position not in seen:
                unexplained(
                    -Fraction(line.amount),
                    f"line {position} missing in Stripe",
                    f"{prefix}, line {position} ({line.kind}): {money_text(line.amount, currency)} is not on "
                    f"Stripe invoice {view.invoice_id}",
                )
        stripe_total = from_minor(view.total, currency)
        if stripe_total != invoice.amount_due:
            unexplained(
                Fraction(stripe_total - invoice.amount_due),
                "Stripe total",
                f"{prefix}, total: Stripe invoice {view.invoice_id} totals {money_text(stripe_total, currency)}, "
                f"amount due {money_text(invoice.amount_due, currency)}",
            )
        paid = from_minor(view.amount_paid, currency)
        status = "failed" if view.status == "open" and facts.mirror_status == "failed" else view.status
        if status == "draft":
            unexplained(
                None,
                f"Stripe invoice {view.invoice_id} is a draft",
                f"{prefix}: recorded as pushed and finalized, but Stripe invoice {view.invoice_id} is a draft",
            )
    credited = Decimal(0)
    for number, amount in facts.credit_notes:
        items.append(
            Item(LEG_COLLECTED, CREDIT_NOTES, -Fraction(amount), None, f"credit note {number} against {label}")
        )
        credited += amount
    outstanding = invoice.amount_due - credited - paid
    where = (
        f"Stripe invoice {view.invoice_id} is {status}"
        if view is not None
        else f"payment state {status} (wattmeter's mirror of Stripe's webhooks)"
    )
    if outstanding and status == "paid":
        if outstanding > 0:
            unexplained(
                -Fraction(outstanding),
                "paid short",
                f"{prefix}: paid in Stripe, but "
                f"{money_text(paid, currency)} of {money_text(invoice.amount_due - credited, currency)} due",
                ROLE_STEP,
            )
        elif credited:
            items.append(
                Item(
                    LEG_COLLECTED,
                    CREDIT_NOTES,
                    -Fraction(outstanding),
                    None,
                    "credited after payment: to the customer's balance in Stripe",
                )
            )
        else:
            unexplained(
                -Fraction(outstanding),
                "paid more than due",
                f"{prefix}: Stripe collected "
                f"{money_text(paid, currency)}, {money_text(invoice.amount_due, currency)} due",
                ROLE_STEP,
            )
    elif outstanding:
        cause = _OUTSTANDING.get(status)
        if cause is None:
            unexplained(
                -Fraction(outstanding),
                f"payment state {status!r}",
                f"{prefix}: {money_text(outstanding, currency)} outstanding in an unknown payment state {status!r}",
                ROLE_STEP,
            )
        else:
            items.append(Item(LEG_COLLECTED, cause, -Fraction(outstanding), None, where))
    items.append(
        Item(
            LEG_COLLECTED,
            COLLECTED,
            Fraction(paid),
            None,
            f"amount paid on Stripe invoice {view.invoice_id}"
            if view is not None
            else "amount paid as last reported by Stripe's webhooks",
            role=ROLE_ANCHOR,
        )
    )
    return CollectedLeg(items, paid)


# -- results -----------------------------------------------------------------------------------


@dataclass
class TenantResult:
    """One tenant's reconciliation for the period: its rows in leg order, its anchors and flags."""

    tenant_id: str
    currency: str
    invoice: str  # number, "draft #7", or "" when there is none
    status: str  # finalized | draft | none
    items: list[Item] = field(default_factory=list)
    metered: Fraction | None = None
    invoiced: Decimal | None = None
    collected: Decimal | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def unexplained(self) -> list[str]:
        """One line per unexplained difference (rows covered by another row's line add none)."""
        lines = [item.message for item in self.items if not item.explained and item.message]
        if not lines and any(not item.explained for item in self.items):
            lines = [
                f"tenant {self.tenant_id}, invoice {self.invoice or '-'}: {item.detail}"
                for item in self.items
                if not item.explained
            ]
        return list(dict.fromkeys(lines))

    def causes(self, cause: str, leg: str | None = None) -> list[Item]:
        return [item for item in self.items if item.cause == cause and (leg is None or item.leg == leg)]


@dataclass(frozen=True)
class Totals:
    currency: str
    metered: Fraction
    invoiced: Decimal
    collected: Decimal
    tenants: int


@dataclass
class Reconciliation:
    """A period reconciled: `unexplained` (one line each, naming tenant, document and line) and
    `flags` (what was not reconciled and why: drafts, not pushed, Stripe not consulted) drive the exit status."""

    period: str
    cutoff: dict[int, int]
    now_ms: int
    tenants: list[TenantResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # flags not about one tenant

    @property
    def unexplained(self) -> list[str]:
        return [line for tenant in self.tenants for line in tenant.unexplained]

    @property
    def flags(self) -> list[str]:
        return self.notes + [flag for tenant in self.tenants for flag in tenant.flags]

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def tenant(self, tenant_id: str) -> TenantResult:
        for tenant in self.tenants:
            if tenant.tenant_id == tenant_id:
                return tenant
        raise KeyError(tenant_id)

    @property
    def totals(self) -> dict[str, Totals]:
        """Per currency: metered (exact), invoiced (amount due of issued invoices), collected."""
        out: dict[str, Totals] = {}
        for tenant in self.tenants:
            held = out.get(tenant.currency) or Totals(tenant.currency, Fraction(0), Decimal(0), Decimal(0), 0)
            out[tenant.currency] = Totals(
                tenant.currency,
                held.metered + (tenant.metered or 0),
                held.invoiced + (tenant.invoiced or 0),
                held.collected + (tenant.collected or 0),
                held.tenants + 1,
            )
        return dict(sorted(out.items()))
