"""The month's spend forecast: the month-to-date run rate, less the discount, at least the commitment."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.pricing.forecast import forecast_subtotal
from billing.pricing.lines import InvoiceLine

DAY = 86_400_000


def line(kind: str, amount: str, correction: bool = False) -> InvoiceLine:
    return InvoiceLine(
        kind, kind, 0, 1, "c", 1, "", "", "", 0, "", Decimal(0), "", Decimal(0), Decimal(amount), None, correction
    )  # noqa: E501


def test_the_run_rate_scales_what_grows_with_use():
    lines = [line("gpu_time", "100.00"), line("energy", "20.00"), line("preemption_credit", "-10.00")]
    lines += [line("discount", "-5.50"), line("tax", "9.99"), line("gpu_time", "7.00", correction=True)]
    # 110.00 in 10 of 30 days: 330.00; the discount and tax lines of today do not scale, the card's rate does
    assert forecast_subtotal(lines, currency="USD", elapsed_ms=10 * DAY, period_ms=30 * DAY) == Decimal("330.00")
    assert forecast_subtotal(
        lines, currency="USD", elapsed_ms=10 * DAY, period_ms=30 * DAY, discount_percent=Decimal("5")
    ) == Decimal("313.50")
    assert forecast_subtotal(
        lines, currency="USD", elapsed_ms=10 * DAY, period_ms=30 * DAY, commitment=Decimal("500.00")
    ) == Decimal("500.00")
    assert forecast_subtotal([line("gpu_time", "1.00")], currency="USD", elapsed_ms=3 * DAY, period_ms=31 * DAY) == (
        Decimal("10.33")  # 10.333.. rounded once, half to even
    )
    assert forecast_subtotal([], currency="JPY", elapsed_ms=0, period_ms=DAY) == Decimal("0")
    with pytest.raises(ValueError):
        forecast_subtotal([], currency="USD", elapsed_ms=0, period_ms=0)
