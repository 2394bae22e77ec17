"""The invoice line: the one type every package uses for a line of an invoice or a credit note.

Rating produces it (`billing.pricing.rating`), invoicing stores it (through the ledger's mapper,
`billing.ledger.lines`), and the reconciliation, the web, the CLI and payments read it. A line
that has not been stored yet has `position` 0 and `service_period` ""; `segments` and `basis`
are known only to the rater (they say where the quantity came from, for `usage_query`).

Units: `quantity_base` is exact (ms of GPU time, mJ of energy before PUE; 0 for money-only lines),
`quantity` is its display form (GPU-hours or kWh after PUE, 6 places), and `amount` is rounded
to the currency's minor unit. `tou_period` is the rate card's time-of-use band ("valley"), never
the month of service, which is `service_period` ("2026-11").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

from billing.pricing.errors import PricingError

LineKind = Literal[
    "gpu_time",
    "gpu_time_rounding",
    "energy",
    "preemption_credit",
    "sla_credit",
    "discount",
    "commitment_true_up",
    "tax",
    "credit",
]
KIND_ORDER: tuple[LineKind, ...] = get_args(LineKind)  # the order lines are listed in
USAGE_KINDS = frozenset({"gpu_time", "gpu_time_rounding", "energy"})
MARKET_CREDIT_KINDS = frozenset({"preemption_credit", "sla_credit"})  # the valley market's (billing.pricing.rating)
PRETAX_KINDS = USAGE_KINDS | MARKET_CREDIT_KINDS | {"discount", "commitment_true_up"}


def line_kind(text: str, position: int) -> LineKind:
    """`text` as a line kind, or a PricingError naming the line (a stored line of a kind this code does not know)."""
    if text not in KIND_ORDER:
        raise PricingError(f"line {position} has an unknown kind {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class LeaseRounding:
    """One lease behind a rounding line: its allocated GPU-ms in the period and the rule applied to it
    (`minimum_ms` 0 when the minimum does not apply: the lease started before the period)."""

    lease_id: str
    allocated_ms: int
    increment_ms: int
    minimum_ms: int


@dataclass(frozen=True, slots=True)
class QuantityBasis:
    """How a GPU-time line's quantity follows from the usage behind it (what `explain` re-derives):
    - "sum": the allocated GPU-ms of the line's segments (plain prices; energy is always a sum);
    - "tier": the key's total T through `tier_quantity(T, tier_mode, lower_ms, upper_ms)`;
    - "lease_rounding": `rounding_uplift` summed over `leases`, each lease's allocated GPU-ms in the period."""

    rule: Literal["sum", "tier", "lease_rounding"] = "sum"
    tier_mode: str = ""
    lower_ms: int = 0
    upper_ms: int | None = None
    leases: tuple[LeaseRounding, ...] = ()


@dataclass(frozen=True)
class InvoiceLine:
    kind: LineKind
    description: str
    service_start_ms: int
    service_end_ms: int
    card_name: str
    card_version: int
    plan: str
    model: str
    tou_period: str
    quantity_base: int  # ms (GPU time) or mJ (energy, before PUE); 0 for money-only lines
    base_unit: str  # "ms" | "mJ" | ""
    quantity: Decimal  # GPU-hours or kWh (after PUE), 6 places; see billing.pricing.rating for money lines
    unit: str  # "GPU-hour" | "kWh" | ""
    unit_price: Decimal
    amount: Decimal  # rounded to the currency's minor unit
    tier: int | None = None  # 1-based tier of a tiered price
    correction: bool = False  # a correction of an earlier period (rate_correction)
    service_period: str = ""  # the month of service, once stored ("2026-11")
    position: int = 0  # the line's position on its document, once stored (a credit note's: its index)
    segments: tuple[tuple[int, int], ...] = ()  # rater only: [start, end) ms ranges whose usage makes the quantity
    basis: QuantityBasis | None = None  # rater only, GPU-time lines: how quantity_base follows from the usage
