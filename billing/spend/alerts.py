"""Pure: which budget thresholds a period's spend has crossed, or is on course to. No I/O, no clock.

A threshold (a percentage of the budget) is crossed when the month-to-date spend (pre-tax, as
invoiced) reaches its amount; it is forecast when it is not crossed yet but the forecast reaches
it. Each (threshold, kind) alerts once per period: the caller derives the alert's id from the
budget, the period, the threshold and the kind, so a re-run, a restart or a correction that lowers
the spend and raises it again never sends one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from billing.pricing.money import round_money

AlertKind = Literal["crossed", "forecast"]


def threshold_amount(amount: Decimal, percent: int, currency: str) -> Decimal:
    return round_money(Fraction(amount) * percent / 100, currency)


def due_alerts(
    *,
    amount: Decimal,
    thresholds: Sequence[int],
    spent: Decimal,
    forecast: Decimal | None,
    currency: str,
) -> list[tuple[int, AlertKind, Decimal]]:
    """(percent, kind, threshold amount) of each threshold crossed or forecast, lowest first."""
    out: list[tuple[int, AlertKind, Decimal]] = []
    for percent in sorted(set(thresholds)):
        level = threshold_amount(amount, percent, currency)
        if spent >= level:
            out.append((percent, "crossed", level))
        elif forecast is not None and forecast >= level:
            out.append((percent, "forecast", level))
    return out
