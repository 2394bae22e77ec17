"""Pure: a month's spend forecast from its month-to-date invoice lines. No I/O, no clock.

Method (stated wherever a forecast is shown, `METHOD`): the month-to-date run rate. The usage lines
so far (GPU time, lease rounding, energy, and the market's credits: what grows with use) are scaled
by the period's length over the time elapsed, the last card's discount is taken off, and the
commitment is the floor, as the invoice would put them; the forecast is before tax and before
prepaid credits. Exact: `Fraction`, rounded once to the currency's minor unit, half to even.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction

from billing.pricing.lines import MARKET_CREDIT_KINDS, USAGE_KINDS, InvoiceLine
from billing.pricing.money import round_money, zero

METHOD = (
    "month-to-date run rate: usage so far x period length / time elapsed, less the discount, at least the commitment"
)
GROWING_KINDS = USAGE_KINDS | MARKET_CREDIT_KINDS


def forecast_subtotal(
    lines: Iterable[InvoiceLine],
    *,
    currency: str,
    elapsed_ms: int,
    period_ms: int,
    discount_percent: Decimal = Decimal(0),
    commitment: Decimal | None = None,
) -> Decimal:
    """The pre-tax subtotal the period is on course for (see the module docstring)."""
    if period_ms <= 0:
        raise ValueError("a period has a length")
    used = sum(
        (Fraction(line.amount) for line in lines if line.kind in GROWING_KINDS and not line.correction), Fraction(0)
    )
    elapsed = min(max(elapsed_ms, 0), period_ms)
    projected = used * period_ms / elapsed if elapsed else Fraction(0)
    projected *= 1 - Fraction(discount_percent) / 100
    amount = round_money(projected, currency)
    if commitment is not None and amount < commitment:
        return commitment
    return amount if amount else zero(currency)
