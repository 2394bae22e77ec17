"""Hypothesis properties of the pure pricing core: exact totals, independence from how the usage
rows were ordered or split (how the Parquet happened to be cut into files), determinism, the
currency's exponent on every amount, and segments that tile any range in any time zone."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import cache
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing.calendar import TouCalendar
from billing.pricing.money import minor_units
from billing.pricing.ratecards import RateCardVersion, parse_rate_card
from billing.pricing.rating import CreditGrant, LeaseQuantity, RatedInvoice, UsageQuantity, rate_tenant
from billing.pricing.segments import card_spans, pricing_segments

HOUR = 3_600_000
MINUTE = 60_000
START = 1_793_491_200_000  # 2026-11-01T00:00:00Z
END = START + 7 * 24 * HOUR  # one week: weekdays, a weekend and the New York fall-back day
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", "Asia/Kathmandu"]
MODELS = ["H100", "A100", "L40S"]
PLANS = ["on_demand", "valley", "interruptible", "reserved"]
SETTINGS = settings(max_examples=60, deadline=None)


@cache
def cards(currency: str, zone: str) -> tuple[RateCardVersion, RateCardVersion]:
    """Two versions (the second from mid-week) with every feature: per-model, tiered, energy,
    PUE, increment, minimum, discount, commitment, tax."""

    def text(version: int, effective_from: str, scale: str, commitment: str) -> str:
        return f"""
name = "prop"
version = {version}
effective_from = "{effective_from}"
currency = "{currency}"
pue = "1.15"
increment_s = 1
minimum_s = 60
discount_percent = "3.5"
commitment = "{commitment}"
[calendar]
timezone = "{zone}"
weekday = {{ valley = [[0, 7], [22, 24]] }}
weekend = {{ valley = [[0, 24]] }}
holidays = {{ country = "US" }}
[gpu_hour."*".on_demand]
peak = "{scale}2.537"
valley = "{scale}1.3"
[gpu_hour.H100.on_demand]
"*" = "{scale}3.1415"
[gpu_hour."*".valley]
"*" = "{scale}0.999"
[gpu_hour."*".interruptible]
"*" = {{ mode = "volume", tiers = [{{ up_to = "2", price = "{scale}1.25" }}, {{ price = "{scale}0.75" }}] }}
[gpu_hour."*".reserved]
"*" = {{ mode = "graduated", tiers = [{{ up_to = "1.5", price = "{scale}2.05" }}, {{ price = "{scale}1.55" }}] }}
[energy_kwh]
peak = "{scale}0.2345"
valley = "{scale}0.1"
[tax]
"US-NY" = "0.08875"
"*" = "0.19"
"""

    scale = "1" if currency == "JPY" else ""  # yen prices are larger
    commitment = {"USD": "25.00", "BHD": "25.000", "JPY": "2500"}[currency]
    first = parse_rate_card(text(1, "2026-01-01T00:00:00Z", scale, commitment), "v1.toml")
    second = parse_rate_card(text(2, "2026-11-04T12:00:00Z", scale, commitment), "v2.toml")
    return first, second


usage_rows = st.lists(
    st.tuples(
        st.integers(0, 7 * 24 * 60 - 1),  # minute of the week
        st.sampled_from(MODELS),
        st.sampled_from(PLANS),
        st.integers(0, 3 * HOUR),  # allocated GPU-ms
        st.integers(0, 5_000_000_000),  # mJ
    ),
    max_size=25,
)
lease_rows = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 7 * 24 * 60 - 1), st.integers(0, 200_000), st.booleans()),
    max_size=8,
)
credit_rows = st.lists(
    st.tuples(st.integers(0, 5000), st.one_of(st.none(), st.integers(-10, 400)), st.integers(0, 100)),
    max_size=4,
)


def build(
    currency: str, zone: str, rows: list, leases: list, credits: list
) -> tuple[list[UsageQuantity], list[LeaseQuantity], list[CreditGrant], dict]:
    usage = [
        UsageQuantity("acme", plan, model, START + minute * MINUTE, ms, ms // 2, mj, 1)
        for minute, model, plan, ms, mj in rows
    ]
    lease_quantities = [
        LeaseQuantity(
            f"L{lease}",
            PLANS[lease % 4],
            MODELS[lease % 3],
            ms,
            START + minute * MINUTE,
            None if new else START - HOUR,
        )
        for lease, minute, ms, new in leases
    ]
    places = minor_units(currency)
    grants = [
        CreditGrant(
            f"C{index}",
            Decimal(units).scaleb(-places),
            None if days is None else END + days * 24 * HOUR,
            START - granted * HOUR,
        )
        for index, (units, days, granted) in enumerate(credits)
    ]
    first, second = cards(currency, zone)
    spans = card_spans([first, second], START, END)
    context = {"segments": pricing_segments(spans, START, END), "spans": spans}
    return usage, lease_quantities, grants, context


def rate(usage: list[UsageQuantity], leases: list[LeaseQuantity], grants: list[CreditGrant], ctx: dict) -> RatedInvoice:
    return rate_tenant(
        tenant_id="acme",
        usage=usage,
        leases=leases,
        tax_jurisdiction="US-NY",
        credits=grants,
        service_start_ms=START,
        service_end_ms=END,
        **ctx,
    )


def split(value: int, parts: int, rng: random.Random) -> list[int]:
    cuts = sorted(rng.randint(0, value) for _ in range(parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, value])]


currencies = st.sampled_from(["USD", "JPY", "BHD"])
zones = st.sampled_from(ZONES)


@SETTINGS
@given(currencies, zones, usage_rows, lease_rows, credit_rows)
def test_totals_are_sums_of_rounded_lines_with_the_currency_exponent(currency, zone, rows, leases, credits):
    usage, lease_quantities, grants, ctx = build(currency, zone, rows, leases, credits)
    invoice = rate(usage, lease_quantities, grants, ctx)
    exponent = -minor_units(currency)
    for amount in [line.amount for line in invoice.lines] + [
        invoice.subtotal,
        invoice.tax,
        invoice.total,
        invoice.credits_applied,
        invoice.amount_due,
    ]:
        assert amount.as_tuple().exponent == exponent
    before_tax = [line for line in invoice.lines if line.kind not in ("tax", "credit")]
    assert invoice.subtotal == sum((line.amount for line in before_tax), Decimal(0))
    assert invoice.total == invoice.subtotal + invoice.tax
    assert invoice.total == sum((line.amount for line in invoice.lines if line.kind != "credit"), Decimal(0))
    assert invoice.amount_due == sum((line.amount for line in invoice.lines), Decimal(0)) >= 0
    assert invoice.credits_applied == sum((amount for _, amount in invoice.credit_drawdowns), Decimal(0))
    assert invoice.credits_applied <= max(invoice.total, Decimal(0))
    # usage lines hold exactly the GPU time and energy of the rows
    gpu = sum(line.quantity_base for line in invoice.lines if line.kind == "gpu_time")
    assert gpu == sum(row.allocated_gpu_ms for row in usage)
    energy = sum(line.quantity_base for line in invoice.lines if line.kind == "energy")
    assert energy == sum(row.energy_mj for row in usage)
    # the commitment is met (after the discount)
    committed = sum((line.amount for line in before_tax), Decimal(0))
    assert committed >= ctx["spans"][-1].card.commitment


@SETTINGS
@given(currencies, zones, usage_rows, lease_rows, credit_rows, st.randoms(use_true_random=False))
def test_the_result_does_not_depend_on_row_order_or_splitting(currency, zone, rows, leases, credits, rng):
    usage, lease_quantities, grants, ctx = build(currency, zone, rows, leases, credits)
    reference = rate(usage, lease_quantities, grants, ctx)
    # rating twice gives identical lines
    assert rate(usage, lease_quantities, grants, ctx) == reference
    # split every row into 1..3 rows with the same key (another file, another row group), then shuffle
    pieces: list[UsageQuantity] = []
    for row in usage:
        parts = rng.randint(1, 3)
        for ms, mj, records in zip(
            split(row.allocated_gpu_ms, parts, rng), split(row.energy_mj, parts, rng), split(row.records, parts, rng)
        ):
            # any instant in the same segment names the same segment
            pieces.append(replace(row, allocated_gpu_ms=ms, energy_mj=mj, records=records))
    lease_pieces: list[LeaseQuantity] = []
    for lease in lease_quantities:
        parts = rng.randint(1, 3)
        for index, ms in enumerate(split(lease.allocated_gpu_ms, parts, rng)):
            # the rater takes the max last_segment_start_ms: only one piece needs to carry it
            last = lease.last_segment_start_ms if index == 0 else START
            lease_pieces.append(replace(lease, allocated_gpu_ms=ms, last_segment_start_ms=last))
    rng.shuffle(pieces)
    rng.shuffle(lease_pieces)
    shuffled_grants = list(grants)
    rng.shuffle(shuffled_grants)
    assert rate(pieces, lease_pieces, shuffled_grants, ctx) == reference


calendars = st.builds(
    lambda zone, start, end, month_start: TouCalendar(
        zone,
        weekday={"valley": ((0, start), (end, 24))},
        weekend={"valley": ((0, 24),)} if start % 2 else {"shoulder": ((1, 3),), "valley": ((3, 9),)},
        months={month_start: replace_weekday(start)} if month_start else {},
        holiday_country="US" if start % 3 == 0 else None,
    ),
    st.sampled_from(ZONES),
    st.integers(1, 11),
    st.integers(12, 23),
    st.integers(0, 12),
)


def replace_weekday(start: int):
    from billing.pricing.calendar import MonthSchedule

    return MonthSchedule({"valley": ((0, start + 1),), "shoulder": ((20, 22),)}, {})


@settings(max_examples=150, deadline=None)
@given(
    calendars,
    st.integers(0, 16 * 365 * 24 * 60),  # minutes from 2020-01-01 on
    st.integers(0, 60 * 24 * 60),  # up to 60 days long
)
def test_segments_tile_any_range_with_whole_minute_boundaries(calendar, start_minute, length_minutes):
    start = 1_577_836_800_000 + start_minute * MINUTE  # 2020-01-01T00:00:00Z
    end = start + length_minutes * MINUTE
    segments = calendar.segments(start, end)
    if start == end:
        assert segments == []
        return
    assert segments[0].start_ms == start and segments[-1].end_ms == end
    zone = ZoneInfo(calendar.timezone)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    for index, segment in enumerate(segments):
        assert segment.start_ms < segment.end_ms
        assert segment.start_ms % MINUTE == 0 and segment.end_ms % MINUTE == 0
        if index:
            assert segment.start_ms == segments[index - 1].end_ms
            assert segment.period != segments[index - 1].period
        # independently: the local wall-clock hour of the first and last minute gives the period
        for instant in (segment.start_ms, segment.end_ms - MINUTE):
            local = (epoch + timedelta(milliseconds=instant)).astimezone(zone)
            assert calendar.hours(local.date())[local.hour] == segment.period
