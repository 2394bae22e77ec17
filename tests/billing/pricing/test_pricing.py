"""The pure pricing core: hand-computed invoices, one for every pricing feature.

Every expected amount is worked out in the comment next to it; prices are per GPU-hour
(3,600,000 ms) and per kWh (3,600,000,000 mJ).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from billing.pricing.calendar import TouCalendar
from billing.pricing.errors import PricingError, RateCardError
from billing.pricing.lines import InvoiceLine
from billing.pricing.money import from_minor, minor_units, round_money, to_minor, zero
from billing.pricing.ratecards import (
    DEMO_CARD,
    FLAT_CARD,
    RateCardVersion,
    Tier,
    Tiered,
    load_rate_card,
    parse_rate_card,
)
from billing.pricing.rating import (
    CreditGrant,
    LeaseQuantity,
    RatedInvoice,
    UsageQuantity,
    rate_correction,
    rate_tenant,
)
from billing.pricing.segments import CardSpan, card_spans, pricing_segments
from schemas.units import datetime_to_ms

HOUR = 3_600_000
MINUTE = 60_000
KWH = 3_600_000_000


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return datetime_to_ms(datetime(year, month, day, hour, minute, tzinfo=timezone.utc))


NOV = utc(2026, 11, 1)
DEC = utc(2026, 12, 1)
MON = utc(2026, 11, 2)  # Monday 2026-11-02 00:00 UTC


def card(
    prices: str,
    *,
    calendar: str = 'timezone = "UTC"\nweekday = { valley = [[0, 6]] }\nweekend = { valley = [[0, 24]] }',
    head: str = "",
    currency: str = "USD",
    effective_from: str = "2026-01-01T00:00:00Z",
    version: int = 1,
    tax: str = '"*" = "0"',
) -> RateCardVersion:
    text = (
        f'name = "test"\nversion = {version}\neffective_from = "{effective_from}"\ncurrency = "{currency}"\n'
        f"{head}\n[calendar]\n{calendar}\n{prices}\n[tax]\n{tax}\n"
    )
    return parse_rate_card(text, "test.toml")


def use(ts: int, ms: int, model: str = "H100", plan: str = "on_demand", mj: int = 0) -> UsageQuantity:
    return UsageQuantity("acme", plan, model, ts, ms, busy_gpu_ms=ms // 2, energy_mj=mj, records=1)


def rate(
    cards: RateCardVersion | Sequence[RateCardVersion],
    start: int,
    end: int,
    usage: Sequence[UsageQuantity],
    leases: Sequence[LeaseQuantity] = (),
    jurisdiction: str = "XX",
    credits: Sequence[CreditGrant] = (),
    corrections: Sequence[InvoiceLine] = (),
) -> RatedInvoice:
    versions = [cards] if isinstance(cards, RateCardVersion) else list(cards)
    spans = card_spans(versions, start, end)
    return rate_tenant(
        tenant_id="acme",
        usage=usage,
        leases=leases,
        segments=pricing_segments(spans, start, end),
        spans=spans,
        tax_jurisdiction=jurisdiction,
        credits=credits,
        service_start_ms=start,
        service_end_ms=end,
        corrections=corrections,
    )


def summary(invoice: RatedInvoice) -> list[tuple[str, str, str, str, str]]:
    return [(line.kind, line.model, line.plan, line.tou_period, str(line.amount)) for line in invoice.lines]


# -- money -------------------------------------------------------------------------------------


def test_minor_units_and_half_even_rounding():
    assert (minor_units("USD"), minor_units("JPY"), minor_units("BHD"), minor_units("KWD")) == (2, 0, 3, 3)
    with pytest.raises(PricingError, match="XYZ"):
        minor_units("XYZ")
    # half to even at the exact half; exact otherwise
    assert round_money(Fraction(225, 1000), "USD") == Decimal("0.22")
    assert round_money(Fraction(235, 1000), "USD") == Decimal("0.24")
    assert round_money(Fraction(2251, 10000), "USD") == Decimal("0.23")
    assert round_money(Decimal("-0.125"), "USD") == Decimal("-0.12")
    assert str(round_money(Fraction(5, 2), "JPY")) == "2" and str(round_money(Fraction(7, 2), "JPY")) == "4"
    assert str(round_money(Decimal("1.0005"), "BHD")) == "1.000"
    assert str(round_money(Fraction(1, 3), "USD")) == "0.33" and str(zero("BHD")) == "0.000"
    assert to_minor(Decimal("12.34"), "USD") == 1234 and str(from_minor(1234, "USD")) == "12.34"
    assert to_minor(Decimal("1.250"), "BHD") == 1250 and str(from_minor(-7, "JPY")) == "-7"
    with pytest.raises(PricingError, match="more than 2 decimal places"):
        to_minor(Decimal("0.001"), "USD")


def test_half_even_per_line():
    c = card('[gpu_hour.A.on_demand]\n"*" = "2.25"\n[gpu_hour.B.on_demand]\n"*" = "2.35"')
    # 6 minutes = 0.1 GPU-hour: A 0.1 x 2.25 = 0.225 -> 0.22 (2 is even); B 0.1 x 2.35 = 0.235 -> 0.24
    invoice = rate(c, MON, MON + HOUR, [use(MON, 6 * MINUTE, "A"), use(MON, 6 * MINUTE, "B")])
    assert [line.amount for line in invoice.lines[:2]] == [Decimal("0.22"), Decimal("0.24")]
    assert invoice.subtotal == Decimal("0.46") and invoice.total == Decimal("0.46")


# -- prices by model, plan and period ------------------------------------------------------------


PRICES = """
[gpu_hour."*".on_demand]
peak = "2.00"
valley = "1.00"
[gpu_hour.H100.on_demand]
peak = "3.00"
valley = "1.50"
[gpu_hour."*".reserved]
"*" = "1.20"
[gpu_hour.H100.valley]
valley = "0.80"
"""


def test_prices_by_model_plan_and_period():
    c = card(PRICES)
    # Monday 00:00-12:00 UTC: valley 00-06, peak 06-12
    valley, peak = MON, MON + 6 * HOUR
    usage = [
        use(valley, 2 * HOUR),  # H100 on_demand valley: 2 h x 1.50 = 3.00
        use(peak, HOUR),  # H100 on_demand peak: 1 h x 3.00 = 3.00
        use(valley, HOUR, "A100"),  # A100 falls back to "*": valley 1 h x 1.00 = 1.00
        use(peak, 30 * MINUTE, "A100"),  # "*" peak: 0.5 h x 2.00 = 1.00
        use(valley, HOUR, "A100", "reserved"),  # "*" reserved, "*" period: 1.20
        use(peak + HOUR, HOUR, "A100", "reserved"),  # 1.20 (a line of its own: another period)
        use(valley + 3 * HOUR, 3 * HOUR, "H100", "valley"),  # H100 valley plan in valley: 3 x 0.80 = 2.40
    ]
    invoice = rate(c, MON, MON + 12 * HOUR, usage)
    assert summary(invoice) == [
        ("gpu_time", "A100", "on_demand", "peak", "1.00"),
        ("gpu_time", "A100", "on_demand", "valley", "1.00"),
        ("gpu_time", "A100", "reserved", "peak", "1.20"),
        ("gpu_time", "A100", "reserved", "valley", "1.20"),
        ("gpu_time", "H100", "on_demand", "peak", "3.00"),
        ("gpu_time", "H100", "on_demand", "valley", "3.00"),
        ("gpu_time", "H100", "valley", "valley", "2.40"),
        ("tax", "", "", "", "0.00"),
    ]
    first = invoice.lines[0]
    assert (first.quantity, first.unit, first.unit_price, first.quantity_base, first.base_unit) == (
        Decimal("0.500000"),
        "GPU-hour",
        Decimal("2.00"),
        30 * MINUTE,
        "ms",
    )
    assert first.segments == ((MON + 6 * HOUR, MON + 12 * HOUR),)
    assert invoice.subtotal == invoice.total == invoice.amount_due == Decimal("12.80")
    # H100 on the valley plan in the peak has no price (not even "*"): a one-line error naming the key
    with pytest.raises(PricingError, match="model 'H100', plan 'valley', period 'peak'"):
        rate(c, MON, MON + 12 * HOUR, [use(peak, HOUR, "H100", "valley")])


def test_valley_boundary_in_the_cards_time_zone():
    c = card(
        '[gpu_hour."*".on_demand]\npeak = "3.00"\nvalley = "1.00"',
        calendar='timezone = "Asia/Tokyo"\nweekday = { valley = [[0, 7]] }',
    )
    # 2026-11-03 21:00-23:00 UTC = Wednesday 2026-11-04 06:00-08:00 JST: valley until 07:00 JST (22:00 UTC)
    start = utc(2026, 11, 3, 21)
    segments = pricing_segments(card_spans([c], start, start + 2 * HOUR), start, start + 2 * HOUR)
    assert [(s.start_ms, s.end_ms, s.period) for s in segments] == [
        (start, start + HOUR, "valley"),
        (start + HOUR, start + 2 * HOUR, "peak"),
    ]
    # one GPU for both hours: 1 h x 1.00 + 1 h x 3.00 = 4.00
    invoice = rate(c, start, start + 2 * HOUR, [use(start, HOUR), use(start + HOUR, HOUR)])
    assert summary(invoice)[:2] == [
        ("gpu_time", "H100", "on_demand", "peak", "3.00"),
        ("gpu_time", "H100", "on_demand", "valley", "1.00"),
    ]
    assert invoice.total == Decimal("4.00")


@pytest.mark.parametrize(
    ("zone", "day", "hours", "valley_hours"),
    [
        # Sundays: the weekend schedule has valley 00-07 local. Spring forward skips hour 2 (02:00 NY,
        # 02:00 Berlin): 6 valley hours of 23; fall back repeats hour 1 (NY) or 2 (Berlin): 8 of 25.
        ("America/New_York", date(2026, 3, 8), 23, 6),
        ("America/New_York", date(2026, 11, 1), 25, 8),
        ("Europe/Berlin", date(2026, 3, 29), 23, 6),
        ("Europe/Berlin", date(2026, 10, 25), 25, 8),
        ("America/New_York", date(2026, 11, 8), 24, 7),
    ],
)
def test_dst_days_have_23_and_25_hours(zone: str, day: date, hours: int, valley_hours: int):
    cal = TouCalendar(zone, weekend={"valley": ((0, 7),)})
    start, end = cal.local_ms(day), cal.local_ms(day, 24)
    segments = cal.segments(start, end)
    assert (end - start) == hours * HOUR
    assert segments[0].start_ms == start and segments[-1].end_ms == end
    assert [(s.period, (s.end_ms - s.start_ms) // HOUR) for s in segments] == [
        ("valley", valley_hours),
        ("peak", 17),
    ]


def test_the_repeated_hour_is_priced_twice_in_its_period():
    # New York, Sunday 2026-11-01: hour 1 (01:00-02:00) happens twice (EDT, then EST); valley is hour 1 only
    cal_text = 'timezone = "America/New_York"\nweekend = { valley = [[1, 2]] }'
    c = card('[gpu_hour."*".on_demand]\npeak = "3.00"\nvalley = "1.00"', calendar=cal_text)
    day = c.calendar.local_ms(date(2026, 11, 1))
    segments = c.calendar.segments(day, c.calendar.local_ms(date(2026, 11, 1), 24))
    # 00:00 EDT = 04:00 UTC; 01:00 EDT = 05:00 UTC; 02:00 EST = 07:00 UTC; midnight EST = 05:00 UTC next day
    assert [(s.start_ms, s.end_ms, s.period) for s in segments] == [
        (utc(2026, 11, 1, 4), utc(2026, 11, 1, 5), "peak"),
        (utc(2026, 11, 1, 5), utc(2026, 11, 1, 7), "valley"),
        (utc(2026, 11, 1, 7), utc(2026, 11, 2, 5), "peak"),
    ]
    # one GPU all 25 hours: valley 2 h x 1.00 + peak 23 h x 3.00 = 2.00 + 69.00 = 71.00
    usage = [use(s.start_ms, s.end_ms - s.start_ms) for s in segments]
    invoice = rate(c, utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), usage)
    assert summary(invoice)[:2] == [
        ("gpu_time", "H100", "on_demand", "peak", "69.00"),
        ("gpu_time", "H100", "on_demand", "valley", "2.00"),
    ]


def test_a_public_holiday_is_priced_as_a_weekend():
    c = card(
        '[gpu_hour."*".on_demand]\npeak = "3.00"\nvalley = "1.00"',
        calendar='timezone = "America/New_York"\nweekday = { valley = [[0, 6]] }\n'
        'weekend = { valley = [[0, 24]] }\nholidays = { country = "US", subdiv = "NY" }',
    )
    cal = c.calendar
    thanksgiving, wednesday = date(2026, 11, 26), date(2026, 11, 25)
    assert cal.is_holiday(thanksgiving) and not cal.is_holiday(wednesday)
    assert [
        (s.period, (s.end_ms - s.start_ms) // HOUR)
        for s in cal.segments(cal.local_ms(wednesday), cal.local_ms(wednesday, 24))
    ] == [
        ("valley", 6),
        ("peak", 18),
    ]
    assert [
        (s.period, (s.end_ms - s.start_ms) // HOUR)
        for s in cal.segments(cal.local_ms(thanksgiving), cal.local_ms(thanksgiving, 24))
    ] == [("valley", 24)]
    # noon to 13:00 local (17:00-18:00 UTC) on each day: Wednesday peak 3.00, Thanksgiving valley 1.00
    wed_noon, thu_noon = utc(2026, 11, 25, 17), utc(2026, 11, 26, 17)
    invoice = rate(c, NOV, DEC, [use(wed_noon, HOUR), use(thu_noon, HOUR)])
    assert summary(invoice)[:2] == [
        ("gpu_time", "H100", "on_demand", "peak", "3.00"),
        ("gpu_time", "H100", "on_demand", "valley", "1.00"),
    ]


def test_month_overrides_change_the_valley_hours():
    cal = TouCalendar.from_dict(
        {"timezone": "UTC", "weekday": {"valley": [[0, 6]]}, "months": {"7": {"weekday": {"valley": [[0, 9]]}}}},
        "t.toml",
    )
    july, june = date(2026, 7, 1), date(2026, 6, 30)  # a Wednesday and a Tuesday
    assert cal.hours(july)[:10] == ("valley",) * 9 + ("peak",)
    assert cal.hours(june)[:7] == ("valley",) * 6 + ("peak",)
    assert cal.months[7].weekend == {}  # inherited from the base weekend (all peak here)
    assert cal.period_at(utc(2026, 7, 1, 8, 30)) == "valley" and cal.period_at(utc(2026, 6, 30, 8, 30)) == "peak"


# -- rate card versions --------------------------------------------------------------------------


def test_a_rate_card_change_mid_period_splits_lines_at_the_instant():
    v1 = card('[gpu_hour."*".on_demand]\n"*" = "2.00"', calendar='timezone = "UTC"')
    v2 = card(
        '[gpu_hour."*".on_demand]\n"*" = "2.60"',
        calendar='timezone = "UTC"',
        version=2,
        effective_from="2026-11-15T12:30:00Z",
    )
    change = utc(2026, 11, 15, 12, 30)
    spans = card_spans([v2, v1], NOV, DEC)
    assert [(s.start_ms, s.end_ms, s.card.version) for s in spans] == [(NOV, change, 1), (change, DEC, 2)]
    segments = pricing_segments(spans, NOV, DEC)
    assert [(s.start_ms, s.end_ms, s.span_index) for s in segments] == [(NOV, change, 0), (change, DEC, 1)]
    # 10 h before the change at 2.00 = 20.00; 10 h after at 2.60 = 26.00
    invoice = rate([v1, v2], NOV, DEC, [use(NOV, 10 * HOUR), use(change, 10 * HOUR)])
    lines = invoice.lines[:2]
    assert [(line.card_version, line.service_start_ms, line.service_end_ms, line.amount) for line in lines] == [
        (1, NOV, change, Decimal("20.00")),
        (2, change, DEC, Decimal("26.00")),
    ]
    assert "2026-11-15T12:30:00Z" in lines[0].description and invoice.total == Decimal("46.00")


def test_boundaries_must_be_whole_minutes():
    with pytest.raises(RateCardError, match=r"test.toml: effective_from = 2026-11-15T12:30:30Z is not on a whole"):
        card('[gpu_hour."*".on_demand]\n"*" = "2.00"', effective_from="2026-11-15T12:30:30Z")
    c = card('[gpu_hour."*".on_demand]\n"*" = "2.00"')
    with pytest.raises(PricingError, match="not on a whole minute"):
        pricing_segments([CardSpan(NOV, NOV + 90_000, c), CardSpan(NOV + 90_000, DEC, c)], NOV, DEC)
    with pytest.raises(PricingError, match="not on a whole minute"):
        pricing_segments([CardSpan(NOV, DEC, c)], NOV + 1, DEC)
    # a zone whose offset then was not whole minutes (Monrovia until 1972: -00:44:30) cannot give boundaries
    old = card(
        '[gpu_hour."*".on_demand]\n"*" = "2.00"',
        calendar='timezone = "Africa/Monrovia"\nweekday = { valley = [[0, 6]] }',
        effective_from="1970-01-01T00:00:00Z",
    )
    with pytest.raises(PricingError, match="time-of-use boundary"):
        pricing_segments([CardSpan(utc(1970, 6, 1), utc(1970, 6, 2), old)], utc(1970, 6, 1), utc(1970, 6, 2))
    with pytest.raises(PricingError, match="no rate card version is in effect"):
        card_spans([c], utc(2025, 12, 1), DEC)


# -- energy --------------------------------------------------------------------------------------


def test_energy_with_pue_and_a_price_per_period():
    c = card(
        '[gpu_hour."*".on_demand]\n"*" = "2.00"\n[energy_kwh]\npeak = "0.20"\nvalley = "0.10"', head='pue = "1.20"'
    )
    # valley: 1 kWh metered x 1.20 = 1.2 kWh x 0.10 = 0.12; peak: 2 kWh x 1.20 = 2.4 kWh x 0.20 = 0.48
    usage = [use(MON, 0, mj=KWH // 2), use(MON + HOUR, 0, mj=KWH // 2), use(MON + 7 * HOUR, 0, mj=2 * KWH)]
    invoice = rate(c, MON, MON + 12 * HOUR, usage)
    energy = [line for line in invoice.lines if line.kind == "energy"]
    got = [(e.tou_period, e.quantity_base, e.base_unit, e.quantity, e.unit, e.unit_price, e.amount) for e in energy]
    assert got == [
        ("peak", 2 * KWH, "mJ", Decimal("2.400000"), "kWh", Decimal("0.20"), Decimal("0.48")),
        ("valley", KWH, "mJ", Decimal("1.200000"), "kWh", Decimal("0.10"), Decimal("0.12")),
    ]
    assert energy[1].segments == ((MON, MON + 6 * HOUR),)
    assert invoice.total == Decimal("0.60")
    # a card with no energy prices bills no energy
    assert rate(card('[gpu_hour."*".on_demand]\n"*" = "2.00"'), MON, MON + HOUR, [use(MON, 0, mj=KWH)]).lines == []


# -- increment and minimum ---------------------------------------------------------------------------


def test_billing_increment_and_60_second_minimum_per_lease():
    c = card(
        '[gpu_hour."*".on_demand]\n"*" = "3.60"\n[gpu_hour.B.on_demand]\n"*" = "7.20"',
        head="increment_s = 1\nminimum_s = 60",
    )
    # 3.60 per GPU-hour is 0.001 per GPU-second
    usage = [use(MON, 10_000), use(MON, 90_500), use(MON, 10_000, "B"), use(MON + HOUR, 5_000)]
    leases = [
        LeaseQuantity("L1", "on_demand", "H100", 10_000, MON),  # 10 s -> 60 s minimum: +50 s
        LeaseQuantity("L2", "on_demand", "H100", 90_500, MON),  # 90.5 s -> 91 s: +0.5 s
        LeaseQuantity("L3", "on_demand", "B", 10_000, MON),  # 10 s of B -> 60 s: +50 s at 7.20/h
        # started in October: no minimum in November, only the increment (5 s is already whole)
        LeaseQuantity("L4", "on_demand", "H100", 5_000, MON + HOUR, lease_start_ms=utc(2026, 10, 31)),
    ]
    invoice = rate(c, MON, MON + 2 * HOUR, usage, leases)
    assert [(line.kind, line.model, line.quantity_base, line.amount) for line in invoice.lines] == [
        # B: 10 s x 0.002 = 0.02; H100: 10 + 90.5 + 5 = 105.5 s x 0.001 = 0.1055 -> 0.11
        ("gpu_time", "B", 10_000, Decimal("0.02")),
        ("gpu_time", "H100", 105_500, Decimal("0.11")),
        # B: 50 s x 0.002 = 0.10; H100: 50 + 0.5 = 50.5 s x 0.001 = 0.0505 -> 0.05
        ("gpu_time_rounding", "B", 50_000, Decimal("0.10")),
        ("gpu_time_rounding", "H100", 50_500, Decimal("0.05")),
        ("tax", "", 0, Decimal("0.00")),
    ]
    rounding = invoice.lines[3]
    assert rounding.unit_price == Decimal("3.60") and rounding.segments == ((MON, MON + 2 * HOUR),)
    assert invoice.total == Decimal("0.28")
    # the same lease split over several rows is summed first (10 s + 10 s = 20 s -> +40 s, not +100 s)
    split = [
        LeaseQuantity("L1", "on_demand", "H100", 10_000, MON),
        LeaseQuantity("L1", "on_demand", "H100", 10_000, MON),
    ]
    lines = rate(c, MON, MON + HOUR, [use(MON, 20_000)], split).lines
    assert [(line.kind, line.quantity_base) for line in lines][:2] == [
        ("gpu_time", 20_000),
        ("gpu_time_rounding", 40_000),
    ]


# -- tiers -------------------------------------------------------------------------------------------


TIERS = (
    '{{ mode = "{mode}", tiers = [{{ up_to = "10", price = "2.00" }}, {{ up_to = 20, price = "1.50" }}, '
    '{{ price = "1.00" }}] }}'
)


def test_graduated_tiers():
    c = card(
        f'[gpu_hour."*".reserved]\n"*" = {TIERS.format(mode="graduated")}',
        calendar='timezone = "UTC"',
        head="increment_s = 60",
    )
    # 25 h: 10 h x 2.00 = 20.00, 10 h x 1.50 = 15.00, 5 h x 1.00 = 5.00; total 40.00
    usage = [use(NOV, 15 * HOUR, plan="reserved"), use(NOV + 20 * HOUR, 10 * HOUR, plan="reserved")]
    leases = [LeaseQuantity("L", "reserved", "H100", 25 * HOUR - 30_000, NOV)]  # 30 s short of a whole minute: +30 s
    invoice = rate(c, NOV, DEC, usage, leases)
    assert [(line.kind, line.tier, line.quantity, line.amount) for line in invoice.lines] == [
        ("gpu_time", 1, Decimal("10.000000"), Decimal("20.00")),
        ("gpu_time", 2, Decimal("10.000000"), Decimal("15.00")),
        ("gpu_time", 3, Decimal("5.000000"), Decimal("5.00")),
        # the rounding uplift at the marginal price (tier 3): 30 s x 1.00/h = 0.00833 -> 0.01
        ("gpu_time_rounding", 3, Decimal("0.008333"), Decimal("0.01")),
        ("tax", None, Decimal("40.01"), Decimal("0.00")),
    ]
    assert "tier 2 (graduated)" in invoice.lines[1].description and invoice.total == Decimal("40.01")
    # exactly 10 h stays in tier 1 (bounds are inclusive)
    assert summary(rate(c, NOV, DEC, [use(NOV, 10 * HOUR, plan="reserved")]))[0][4] == "20.00"


def test_volume_tiers():
    c = card(f'[gpu_hour."*".reserved]\n"*" = {TIERS.format(mode="volume")}', calendar='timezone = "UTC"')
    # 25 h reach tier 3: all 25 h x 1.00 = 25.00;  15 h reach tier 2: 15 x 1.50 = 22.50;  10 h: 10 x 2.00 = 20.00
    for hours, tier, amount in [(25, 3, "25.00"), (15, 2, "22.50"), (10, 1, "20.00")]:
        line = rate(c, NOV, DEC, [use(NOV, hours * HOUR, plan="reserved")]).lines[0]
        assert (line.tier, line.quantity_base, line.unit_price, line.amount) == (
            tier,
            hours * HOUR,
            Decimal(["2.00", "1.50", "1.00"][tier - 1]),
            Decimal(amount),
        )


def test_tiers_count_per_model_plan_and_period():
    c = card(f'[gpu_hour."*".reserved]\n"*" = {TIERS.format(mode="graduated")}')
    # 8 h valley and 8 h peak: each key stays in tier 1: 2 x 8 x 2.00 = 32.00 (not 10 h in tier 1 + 6 in tier 2)
    invoice = rate(
        c, MON, MON + 24 * HOUR, [use(MON, 8 * HOUR, plan="reserved"), use(MON + 6 * HOUR, 8 * HOUR, plan="reserved")]
    )
    assert [(line.tou_period, line.tier, line.amount) for line in invoice.lines[:2]] == [
        ("peak", 1, Decimal("16.00")),
        ("valley", 1, Decimal("16.00")),
    ]


# -- discount, commitment, tax, credits ----------------------------------------------------------------


FLAT = '[gpu_hour."*".on_demand]\n"*" = "2.50"'


def test_percentage_discount():
    c = card(FLAT, head='discount_percent = "12.5"')
    # 40 h x 2.50 = 100.00; discount -12.5 % = -12.50; total 87.50
    invoice = rate(c, NOV, DEC, [use(NOV, 40 * HOUR)])
    discount = invoice.lines[1]
    assert (discount.kind, discount.quantity, discount.unit_price, discount.amount) == (
        "discount",
        Decimal("100.00"),
        Decimal("-0.125"),
        Decimal("-12.50"),
    )
    assert invoice.total == Decimal("87.50")
    # 0.07 x 12.5 % = 0.00875 -> -0.01
    assert rate(c, NOV, DEC, [use(NOV, 100_800)]).lines[1].amount == Decimal("-0.01")


def test_commitment_true_up():
    c = card(FLAT, head='commitment = "150.00"\ndiscount_percent = "10"')
    # 40 h x 2.50 = 100.00, -10 % = -10.00, spend 90.00 < 150.00: true-up 60.00; total 150.00
    invoice = rate(c, NOV, DEC, [use(NOV, 40 * HOUR)])
    assert summary(invoice) == [
        ("gpu_time", "H100", "on_demand", "valley", "100.00"),  # Sunday 2026-11-01: valley
        ("discount", "", "", "", "-10.00"),
        ("commitment_true_up", "", "", "", "60.00"),
        ("tax", "", "", "", "0.00"),
    ]
    assert invoice.total == Decimal("150.00")
    # no usage: no usage lines, still the whole commitment
    assert summary(rate(c, NOV, DEC, [])) == [("commitment_true_up", "", "", "", "150.00"), ("tax", "", "", "", "0.00")]
    # spend above the commitment: no true-up (80 h x 2.50 = 200.00 - 20.00 = 180.00)
    assert [line.kind for line in rate(c, NOV, DEC, [use(NOV, 80 * HOUR)]).lines] == ["gpu_time", "discount", "tax"]


def test_tax_by_jurisdiction():
    c = card(FLAT, tax='"US-NY" = "0.08875"\n"US" = "0.05"\n"*" = "0"')
    usage = [use(NOV, 40 * HOUR)]  # 100.00
    # New York: 100.00 x 0.08875 = 8.875 -> 8.88 (half even: 887.5 cents -> 888); total 108.88
    ny = rate(c, NOV, DEC, usage, jurisdiction="US-NY")
    tax = ny.lines[-1]
    assert (tax.kind, tax.quantity, tax.unit_price, tax.amount, ny.total) == (
        "tax",
        Decimal("100.00"),
        Decimal("0.08875"),
        Decimal("8.88"),
        Decimal("108.88"),
    )
    assert "US-NY 8.875%" in tax.description
    assert rate(c, NOV, DEC, usage, jurisdiction="US-CA").tax == Decimal("5.00")  # falls back to "US"
    assert rate(c, NOV, DEC, usage, jurisdiction="DE").tax == Decimal("0.00")  # falls back to "*"
    no_default = card(FLAT, tax='"US-NY" = "0.08875"')
    with pytest.raises(PricingError, match="no tax rate for jurisdiction 'DE'"):
        rate(no_default, NOV, DEC, usage, jurisdiction="DE")


def test_credits_earliest_expiry_first_never_expired_ones():
    c = card(FLAT)
    grants = [
        CreditGrant("late", Decimal("30.00"), utc(2027, 3, 1), utc(2026, 1, 1)),
        CreditGrant("forever", Decimal("500"), None, utc(2025, 1, 1)),
        CreditGrant("early", Decimal("50.00"), utc(2027, 1, 1), utc(2026, 6, 1)),
        CreditGrant("expired", Decimal("1000.00"), DEC, utc(2026, 1, 1)),  # expires at the period end: unused
        CreditGrant("tie", Decimal("10.00"), utc(2027, 1, 1), utc(2026, 5, 1)),  # same expiry as early, granted first
    ]
    # total 100.00: tie 10.00, early 50.00, late 30.00, then forever 10.00 (of its 500); due 0.00
    invoice = rate(c, NOV, DEC, [use(NOV, 40 * HOUR)], credits=grants)
    assert invoice.credit_drawdowns == [
        ("tie", Decimal("10.00")),
        ("early", Decimal("50.00")),
        ("late", Decimal("30.00")),
        ("forever", Decimal("10.00")),
    ]
    assert [line.amount for line in invoice.lines if line.kind == "credit"] == [
        Decimal("-10.00"),
        Decimal("-50.00"),
        Decimal("-30.00"),
        Decimal("-10.00"),
    ]
    assert (invoice.total, invoice.credits_applied, invoice.amount_due) == (
        Decimal("100.00"),
        Decimal("100.00"),
        Decimal("0.00"),
    )
    assert sum(line.amount for line in invoice.lines) == invoice.amount_due
    # a smaller total draws only what it needs: 20 h x 2.50 = 50.00 = tie 10.00 + early 40.00
    assert rate(c, NOV, DEC, [use(NOV, 20 * HOUR)], credits=grants).credit_drawdowns == [
        ("tie", Decimal("10.00")),
        ("early", Decimal("40.00")),
    ]
    with pytest.raises(PricingError, match="more than 2 decimal places"):
        rate(c, NOV, DEC, [], credits=[CreditGrant("odd", Decimal("0.001"), None, NOV)])


# -- currencies ---------------------------------------------------------------------------------------


def test_jpy_has_no_decimals():
    c = card('[gpu_hour."*".on_demand]\n"*" = "450"\n[energy_kwh]\n"*" = "25"', currency="JPY", tax='"*" = "0.10"')
    # 90 s x 450/h = 11.25 -> 11; 0.5 kWh x 25 = 12.5 -> 12 (half even); subtotal 23; tax 2.3 -> 2; total 25
    invoice = rate(c, MON, MON + HOUR, [use(MON, 90_000, mj=KWH // 2)])
    assert [str(line.amount) for line in invoice.lines] == ["11", "12", "2"]
    assert (str(invoice.subtotal), str(invoice.tax), str(invoice.total)) == ("23", "2", "25")


def test_bhd_has_three_decimals():
    c = card(
        '[gpu_hour."*".on_demand]\n"*" = "1.125"\n[energy_kwh]\n"*" = "0.0205"', currency="BHD", tax='"*" = "0.10"'
    )
    # 20 min x 1.125/h = 0.375; 1 kWh x 0.0205 = 0.0205 -> 0.020 (half even); subtotal 0.395; tax 0.0395 -> 0.040
    invoice = rate(c, MON, MON + HOUR, [use(MON, 20 * MINUTE, mj=KWH)])
    assert [str(line.amount) for line in invoice.lines] == ["0.375", "0.020", "0.040"]
    assert str(invoice.total) == "0.435"


# -- rate card files -------------------------------------------------------------------------------------


def test_a_float_price_is_refused_with_one_line():
    text = FLAT_CARD.read_text().replace(
        '[gpu_hour."*".on_demand]\n"*" = "2.50"', "[gpu_hour.H100.on_demand]\npeak = 2.5"
    )
    with pytest.raises(RateCardError) as err:
        parse_rate_card(text, "flat.toml")
    assert str(err.value) == (
        "flat.toml: gpu_hour.H100.on_demand.peak = 2.5 is a float: "
        'write prices as quoted decimal strings such as "2.50"'
    )
    with pytest.raises(RateCardError, match=r'gpu_hour."\*".on_demand.peak = 2 is an integer'):
        card('[gpu_hour."*".on_demand]\npeak = 2')
    with pytest.raises(RateCardError, match=r"tax.US = 0.05 is a float"):
        card(FLAT, tax="US = 0.05")
    with pytest.raises(RateCardError, match=r"pue = 1.2 is a float"):
        card(FLAT, head="pue = 1.2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('[gpu_hour."*".on_demand]\nnight = "1.00"', "period 'night' is not in the calendar"),
        ('[gpu_hour."*".weekly]\n"*" = "1.00"', "plan 'weekly' is not one of"),
        ('[gpu_hour."*".on_demand]\n"*" = "-1.00"', "must be >= 0"),
        ('[gpu_hour."*".on_demand]\n"*" = "abc"', "is not a decimal number"),
        (
            '[gpu_hour."*".on_demand]\n"*" = { mode = "volume", tiers = [{ price = "1" }, { price = "2" }] }',
            "only the last tier",
        ),
        ('[gpu_hour."*".on_demand]\n"*" = { mode = "stepped", tiers = [{ price = "1" }] }', "mode = 'stepped'"),
        ('[gpu_hour."*".on_demand]\n"*" = "1.00"\n[energy]\n"*" = "1"', "energy is not a known field"),
    ],
)
def test_rate_card_validation_names_the_field(change: str, message: str):
    with pytest.raises(RateCardError, match=message) as err:
        card(change)
    assert str(err.value).startswith("test.toml: ") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ('pue = "0.9"', "pue = 0.9 must be >= 1"),
        ('discount_percent = "120"', "between 0 and 100"),
        ('commitment = "10.001"', "commitment: amount 10.001 USD has more than 2 decimal places"),
    ],
)
def test_rate_card_terms_are_checked(head: str, message: str):
    with pytest.raises(RateCardError, match=message):
        card(FLAT, head=head)
    with pytest.raises(RateCardError, match="tax.US = 8.875 must be between 0 and 1"):
        card(FLAT, tax='US = "8.875"')
    with pytest.raises(RateCardError, match="not an IANA time zone"):
        card(FLAT, calendar='timezone = "Mars/Olympus"')
    with pytest.raises(RateCardError, match="weekday.valley: hour 3 is already in period shoulder"):
        card(FLAT, calendar='timezone = "UTC"\nweekday = { valley = [[0, 6]], shoulder = [[3, 8]] }')
    with pytest.raises(RateCardError, match="calendar.holidays"):
        card(FLAT, calendar='timezone = "UTC"\nholidays = { country = "ZZ" }')


def test_rate_card_round_trips_through_to_dict_and_from_dict():
    tiers = TIERS.format(mode="graduated")
    c = card(
        f'{PRICES}\n[gpu_hour.H100.reserved]\n"*" = {tiers}\n[energy_kwh]\npeak = "0.20"\nvalley = "0.10"',
        head='pue = "1.20"\nincrement_s = 1\nminimum_s = 60\ncommitment = "500.00"\ndiscount_percent = "2.5"',
        calendar=(
            'timezone = "America/New_York"\nweekday = { valley = [[0, 7], [22, 24]] }\n'
            "weekend = { valley = [[0, 24]] }\n"
            'holidays = { country = "US", subdiv = "NY" }\n[calendar.months.7]\nweekday = { valley = [[0, 6]] }'
        ),
        tax='"US-NY" = "0.08875"\n"*" = "0"',
    )
    stored = json.loads(json.dumps(c.to_dict()))  # what a JSON column gives back
    again = RateCardVersion.from_dict(stored, "db")
    assert again == c and again.content_hash() == c.content_hash() and again.to_dict() == c.to_dict()
    assert c.gpu_price("H100", "reserved", "peak") == Tiered(
        "graduated",
        (Tier(Decimal("10"), Decimal("2.00")), Tier(Decimal("20"), Decimal("1.50")), Tier(None, Decimal("1.00"))),
    )
    assert stored["gpu_hour"]["H100"]["on_demand"] == {"peak": "3.00", "valley": "1.50"}
    assert stored["effective_from"] == "2026-01-01T00:00:00Z" and stored["minimum_ms"] == 60_000
    assert len(c.content_hash()) == 64
    # any change of content changes the hash
    changed = dict(stored, discount_percent="2.6")
    assert RateCardVersion.from_dict(changed, "db").content_hash() != c.content_hash()


def test_the_shipped_cards_load():
    flat, demo = load_rate_card(FLAT_CARD), load_rate_card(DEMO_CARD)
    assert flat.gpu_price("NVIDIA H100 80GB HBM3", "valley", "peak") == Decimal("2.50")
    assert flat.energy_price("peak") == Decimal("0.15") and flat.minimum_ms == 0
    # the demo's hour (2026-11-02 00:00-01:00 UTC: Sunday evening in New York) is valley
    assert demo.calendar.segments(MON, MON + HOUR)[0].period == "valley"
    assert demo.gpu_price("NVIDIA H100 80GB HBM3", "on_demand", "valley") < demo.gpu_price(
        "NVIDIA H100 80GB HBM3", "on_demand", "peak"
    )
    assert demo.tax_rate("US-NY") == Decimal("0.08875") and demo.pue == Decimal("1.20")
    with pytest.raises(RateCardError, match="does not exist"):
        load_rate_card(Path("/nonexistent/card.toml"))


# -- corrections ---------------------------------------------------------------------------------------


def test_late_usage_becomes_correction_lines_that_keep_their_period():
    c = card('[gpu_hour."*".on_demand]\n"*" = "3.60"', head='commitment = "1.00"', calendar='timezone = "UTC"')
    spans = card_spans([c], NOV, DEC)
    segments = pricing_segments(spans, NOV, DEC)

    def november(usage: list[UsageQuantity], leases: list[LeaseQuantity]) -> RatedInvoice:
        return rate(c, NOV, DEC, usage, leases)

    # billed in November: lease L 10 s -> 0.01 + minimum uplift 50 s -> 0.05; true-up 1.00 - 0.06 = 0.94
    billed = november([use(NOV, 10_000)], [LeaseQuantity("L", "on_demand", "H100", 10_000, NOV)])
    assert [line.amount for line in billed.lines] == [
        Decimal("0.01"),
        Decimal("0.05"),
        Decimal("0.94"),
        Decimal("0.00"),
    ]

    def correction(usage: list[UsageQuantity], leases: list[LeaseQuantity]) -> list[InvoiceLine]:
        return rate_correction(
            tenant_id="acme",
            usage=usage,
            leases=leases,
            segments=segments,
            spans=spans,
            service_start_ms=NOV,
            service_end_ms=DEC,
            billed=billed.lines,
        )

    # nothing late: nothing to correct
    assert correction([use(NOV, 10_000)], [LeaseQuantity("L", "on_demand", "H100", 10_000, NOV)]) == []
    # 20 s arrive late for the same lease: 30 s is still under the 60 s minimum, and the commitment
    # still covers it: +0.02 GPU time, -0.02 rounding, true-up unchanged (1.00 - 0.06): net 0.00
    late = [use(NOV, 10_000), use(NOV + HOUR, 20_000)]
    lines = correction(late, [LeaseQuantity("L", "on_demand", "H100", 30_000, NOV + HOUR)])
    assert [(line.kind, line.quantity_base, line.amount, line.correction) for line in lines] == [
        ("gpu_time", 20_000, Decimal("0.02"), True),
        ("gpu_time_rounding", -20_000, Decimal("-0.02"), True),
    ]
    assert lines[0].description.startswith("Correction for 2026-11-01..2026-12-01: GPU time")
    assert (lines[0].service_start_ms, lines[0].service_end_ms) == (NOV, DEC)
    # 1 h arrives late: 3.61 of usage, above the commitment: +3.60 GPU time, -0.05 rounding, -0.94 true-up
    big = [use(NOV, 10_000), use(NOV + HOUR, HOUR)]
    lines = correction(big, [LeaseQuantity("L", "on_demand", "H100", HOUR + 10_000, NOV + HOUR)])
    assert [(line.kind, line.amount) for line in lines] == [
        ("gpu_time", Decimal("3.60")),
        ("gpu_time_rounding", Decimal("-0.05")),
        ("commitment_true_up", Decimal("-0.94")),
    ]
    # they go on December's invoice, taxed there: December usage 1 h = 3.60 + corrections 2.61 = 6.21;
    # tax 10 % = 0.621 -> 0.62; total 6.83
    dec_card = card('[gpu_hour."*".on_demand]\n"*" = "3.60"', tax='"*" = "0.10"', calendar='timezone = "UTC"')
    december = rate(dec_card, DEC, utc(2027, 1, 1), [use(DEC, HOUR)], corrections=lines)
    assert [(line.kind, line.correction, line.amount) for line in december.lines] == [
        ("gpu_time", False, Decimal("3.60")),
        ("gpu_time", True, Decimal("3.60")),
        ("gpu_time_rounding", True, Decimal("-0.05")),
        ("commitment_true_up", True, Decimal("-0.94")),
        ("tax", False, Decimal("0.62")),
    ]
    assert december.total == Decimal("6.83")
    # a second batch of late data is corrected against the invoice AND the first correction:
    # 30 more minutes: +1.80 only
    more = [*big, use(NOV + 2 * HOUR, 30 * MINUTE)]
    second = rate_correction(
        tenant_id="acme",
        usage=more,
        leases=[LeaseQuantity("L", "on_demand", "H100", HOUR + 30 * MINUTE + 10_000, NOV + 2 * HOUR)],
        segments=segments,
        spans=spans,
        service_start_ms=NOV,
        service_end_ms=DEC,
        billed=[*billed.lines, *lines],
    )
    assert [(line.kind, line.quantity_base, line.amount) for line in second] == [
        ("gpu_time", 30 * MINUTE, Decimal("1.80"))
    ]
    assert second[0].description.count("Correction for") == 1


def test_usage_outside_the_period_or_of_another_tenant_is_refused():
    c = card(FLAT)
    with pytest.raises(PricingError, match="in no pricing segment"):
        rate(c, NOV, DEC, [use(DEC, HOUR)])
    with pytest.raises(PricingError, match="tenant 'globex'"):
        rate(c, NOV, DEC, [UsageQuantity("globex", "on_demand", "H100", NOV, HOUR)])
    with pytest.raises(PricingError, match="plan 'weekly'"):
        rate(c, NOV, DEC, [use(NOV, HOUR, plan="weekly")])


def test_a_contract_starting_mid_period_prices_only_its_part():
    c = card(FLAT, effective_from="2026-11-10T00:00:00Z", calendar='timezone = "UTC"')
    start = utc(2026, 11, 10)
    spans = card_spans([c], start, DEC)
    segments = pricing_segments(spans, start, DEC)

    def november(usage: list[UsageQuantity]) -> RatedInvoice:
        return rate_tenant(
            tenant_id="acme",
            usage=usage,
            leases=[],
            segments=segments,
            spans=spans,
            tax_jurisdiction="XX",
            service_start_ms=NOV,
            service_end_ms=DEC,
        )

    # 4 h x 2.50 = 10.00, the line's service range is the card's part of the month
    line = november([use(start, 4 * HOUR)]).lines[0]
    assert (line.amount, line.service_start_ms, line.service_end_ms) == (Decimal("10.00"), start, DEC)
    with pytest.raises(PricingError, match="no rate card in effect"):
        november([use(NOV, HOUR)])


def test_a_line_for_an_unknown_model_says_so():
    """The agent writes model "" when it cannot read the GPU's name: priced at "*", named "(unknown model)"."""
    c = card(PRICES)
    invoice = rate(
        c,
        MON,
        MON + 12 * HOUR,
        [use(MON + 6 * HOUR, HOUR, "")],
        [LeaseQuantity("L", "on_demand", "", 1, MON + 6 * HOUR)],
    )
    gpu, rounding = invoice.lines[0], invoice.lines[1]
    # "*" on_demand peak: 1 h x 2.00 = 2.00
    assert (gpu.kind, gpu.model, gpu.amount) == ("gpu_time", "", Decimal("2.00"))
    assert gpu.description.startswith("GPU time (unknown model), on_demand, peak")
    assert rounding.kind == "gpu_time_rounding" and "(unknown model), on_demand, peak" in rounding.description
    assert " , " not in gpu.description + rounding.description
