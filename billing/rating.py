"""Pure: usage totals + a rate card -> priced invoice lines, in Decimal."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from billing.ratecards import RateCard
from schemas.units import gpu_hours, kwh

CENT = Decimal("0.01")


@dataclass(frozen=True)
class TenantUsage:
    """What one tenant used in a period, in integer units."""

    tenant_id: str
    allocated_gpu_ms: int = 0
    busy_gpu_ms: int = 0
    energy_mj: int = 0
    records: int = 0


@dataclass(frozen=True)
class InvoiceLine:
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Invoice:
    tenant_id: str
    period_start_ms: int
    period_end_ms: int
    currency: str
    rate_card: str
    usage: TenantUsage
    lines: list[InvoiceLine] = field(default_factory=list)

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))


def money(value: Decimal) -> Decimal:
    """Round to cents, half to even (banker's rounding), once per line."""
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def rate(usage: TenantUsage, card: RateCard, period_start_ms: int, period_end_ms: int) -> Invoice:
    hours = gpu_hours(usage.allocated_gpu_ms)
    energy = kwh(usage.energy_mj)
    lines = [
        InvoiceLine("GPU time", hours, "GPU-hour", card.gpu_hour, money(hours * card.gpu_hour)),
        InvoiceLine("Energy", energy, "kWh", card.kwh, money(energy * card.kwh)),
    ]
    return Invoice(usage.tenant_id, period_start_ms, period_end_ms, card.currency, card.name, usage, lines)
