"""The valley market in the pure rating core: a preemption by the owner never rounds a lease up,
the card's [interruption] rules waive or credit it on a line of its own, [sla.<plan>] credits a
plan's charge by availability, capped at it; corrections of late usage re-rate them once."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing.errors import RateCardError
from billing.pricing.market_terms import Availability, Preemption, availability, preemption_rule, sla_credit_percent
from billing.pricing.rating import LeaseQuantity, UsageQuantity, rate_correction, rate_tenant
from billing.pricing.segments import card_spans, pricing_segments
from tests.billing.pricing.test_pricing import HOUR, MINUTE, MON, card

MARKET = """
increment_s = 60
minimum_s = 3600
[interruption]
notice_s = 120
free_if_preempted_within_s = 3600
short_notice_credit_percent = "50"
[sla.on_demand]
availability = "99.9"
credits = [
  { below = "99.9", percent = "10" }, { below = "99.0", percent = "25" }, { below = "95.0", percent = "100" },
]
"""
PRICES = '[gpu_hour."*".valley]\n"*" = "3.60"\n[gpu_hour."*".on_demand]\n"*" = "7.20"\n[energy_kwh]\n"*" = "0.10"'
CARD = card(PRICES, head=MARKET, calendar='timezone = "UTC"\nweekday = {}\nweekend = {}')
KWH = 3_600_000_000


def rate(usage, leases=(), preemptions=None, health=None, start=MON, end=MON + 24 * HOUR):
    spans = card_spans([CARD], start, end)
    return rate_tenant(
        tenant_id="acme",
        usage=usage,
        leases=leases,
        segments=pricing_segments(spans, start, end),
        spans=spans,
        tax_jurisdiction="XX",
        service_start_ms=start,
        service_end_ms=end,
        preemptions=preemptions,
        health=health,
    )


def correct(usage, leases, billed, preemptions, health=None):
    """The day's correction lines: its complete usage re-rated against what was billed."""
    spans = card_spans([CARD], MON, MON + 24 * HOUR)
    return rate_correction(
        tenant_id="acme",
        usage=usage,
        leases=leases,
        segments=pricing_segments(spans, MON, MON + 24 * HOUR),
        spans=spans,
        service_start_ms=MON,
        service_end_ms=MON + 24 * HOUR,
        billed=billed,
        preemptions=preemptions,
        health=health,
    )


def lease_use(lease: str, ms: int, plan: str = "valley", mj: int = 0, at: int = MON) -> UsageQuantity:
    return UsageQuantity("acme", plan, "H100", at, ms, 0, mj, 1, lease)


def kinds(invoice) -> list[tuple[str, str]]:
    return [(line.kind, str(line.amount)) for line in invoice.lines]


def test_the_card_parses_and_stores_the_market_terms():
    assert CARD.interruption is not None
    assert (CARD.interruption.notice_ms, CARD.interruption.free_within_ms) == (120_000, 3_600_000)
    assert CARD.sla["on_demand"].credits[1].percent == Decimal("25")
    assert type(CARD).from_dict(CARD.to_dict()) == CARD
    plain = card(PRICES)
    assert "interruption" not in plain.to_dict() and "sla" not in plain.to_dict()  # older cards' hashes stay
    with pytest.raises(RateCardError, match="interruption.notice_s is required"):
        card(PRICES, head="[interruption]\nfree_if_preempted_within_s = 1")
    with pytest.raises(RateCardError, match=r"sla.valley.credits: below = 99.95 must be within \(0, availability\]"):
        card(PRICES, head='[sla.valley]\navailability = "99.9"\ncredits = [{ below = "99.95", percent = "10" }]')
    with pytest.raises(RateCardError, match="sla.spot: plan 'spot'"):
        card(PRICES, head='[sla.spot]\navailability = "99"')


def test_preempted_within_the_free_hour_owes_nothing_and_is_not_rounded_up():
    """40 minutes on the valley plan at 3.60/h = 2.40 and 0.5 kWh x 0.10 = 0.05: the owner takes the
    GPU back at 40 min, inside the first hour: no 60-minute minimum, and a waiver of 2.45."""
    used = [lease_use("L1", 40 * MINUTE, mj=KWH // 2)]
    leases = [LeaseQuantity("L1", "valley", "H100", 40 * MINUTE, MON, MON)]
    tenant_end = rate(used, leases)
    assert kinds(tenant_end) == [
        ("gpu_time", "2.40"),
        ("gpu_time_rounding", "1.20"),
        ("energy", "0.05"),
        ("tax", "0.00"),
    ]
    owner = {"L1": Preemption("L1", MON, MON + 38 * MINUTE, MON + 40 * MINUTE)}
    invoice = rate(used, leases, owner)
    assert kinds(invoice) == [
        ("gpu_time", "2.40"),
        ("energy", "0.05"),
        ("preemption_credit", "-2.45"),
        ("tax", "0.00"),
    ]
    waiver = invoice.lines[2]
    assert "lease L1" in waiver.description and "free if preempted within 3600 s" in waiver.description
    assert waiver.quantity == Decimal("2.45") and waiver.unit_price == Decimal("-1")
    assert invoice.total == Decimal("0.00")


def test_preempted_after_the_free_hour_is_billed_per_second_with_no_minimum():
    """3 h 0 min 30.5 s: per second to the preemption instant, no 60 s increment, full notice: no credit."""
    ms = 3 * HOUR + 30_500
    used = [lease_use("L2", ms)]
    leases = [LeaseQuantity("L2", "valley", "H100", ms, MON, MON)]
    owner = {"L2": Preemption("L2", MON, MON + ms - 120_000, MON + ms)}
    # 10,830.5 s x 0.001 = 10.8305 -> 10.83 (half even); a tenant's end would add 29.5 s of increment
    assert kinds(rate(used, leases, owner)) == [("gpu_time", "10.83"), ("tax", "0.00")]
    assert kinds(rate(used, leases)) == [("gpu_time", "10.83"), ("gpu_time_rounding", "0.03"), ("tax", "0.00")]


def test_short_notice_after_the_free_hour_earns_the_cards_percent():
    ms = 2 * HOUR
    used = [lease_use("L3", ms)]
    owner = {"L3": Preemption("L3", MON, MON + ms - 30_000, MON + ms)}  # 30 s of the 120 s promised
    invoice = rate(used, [LeaseQuantity("L3", "valley", "H100", ms, MON, MON)], owner)
    assert kinds(invoice) == [("gpu_time", "7.20"), ("preemption_credit", "-3.60"), ("tax", "0.00")]
    assert "50% short-notice credit: 30 s notice of 120 s promised" in invoice.lines[1].description


def test_rules_in_isolation():
    terms = CARD.interruption
    assert preemption_rule(terms, Preemption("x", 0, 0, 3_600_000)) == ("waiver", Decimal(100))
    assert preemption_rule(terms, Preemption("x", 0, 3_480_001, 3_600_001)) is None  # 120 s notice, 1 h + 1 ms
    assert preemption_rule(terms, Preemption("x", 0, 3_480_002, 3_600_001)) == ("short_notice", Decimal(50))
    assert preemption_rule(None, Preemption("x", 0, 0, 1)) is None
    assert availability(0, 0) == 1 and availability(1000, 5) == Fraction(199, 200)
    sla = CARD.sla["on_demand"]
    earned = [sla_credit_percent(sla, Fraction(p, 1000)) for p in (1000, 999, 998, 990, 989, 950, 949)]
    assert earned == [0, 0, 10, 10, 25, 25, 100]


def test_sla_credit_is_a_percent_of_the_plans_compute_charge():
    """on_demand 100 h at 7.20 = 720.00; 1 h of 100 unhealthy: 99 % (not below 99.0): 10 % = -72.00.
    Energy is not part of the plan's charge; the valley plan has no SLA on this card."""
    used = [use_plan("on_demand", 100 * HOUR, KWH), use_plan("valley", HOUR)]
    health = {"on_demand": Availability(100 * HOUR, HOUR), "valley": Availability(HOUR, HOUR)}
    invoice = rate(used, health=health, end=MON + 200 * HOUR)
    assert kinds(invoice) == [
        ("gpu_time", "720.00"),
        ("gpu_time", "3.60"),
        ("energy", "0.10"),
        ("sla_credit", "-72.00"),
        ("tax", "0.00"),
    ]
    assert "availability 99.000% against 99.9% promised" in invoice.lines[3].description
    worse = rate(used, health={"on_demand": Availability(100 * HOUR, 10 * HOUR)}, end=MON + 200 * HOUR)
    assert ("sla_credit", "-720.00") in kinds(worse)  # 90 %: 100 %, the whole plan charge and no more


def use_plan(plan: str, ms: int, mj: int = 0) -> UsageQuantity:
    return UsageQuantity("acme", plan, "H100", MON, ms, 0, mj, 1)


def test_a_late_correction_rerates_the_waiver_once():
    """Usage of the preempted lease arrives after the invoice: the correction nets both lines."""
    first = [lease_use("L1", 20 * MINUTE)]
    owner = {"L1": Preemption("L1", MON, MON, MON + 40 * MINUTE)}
    leases = [LeaseQuantity("L1", "valley", "H100", 20 * MINUTE, MON, MON)]
    billed = rate(first, leases, owner).lines
    complete = [*first, lease_use("L1", 20 * MINUTE)]
    whole = [LeaseQuantity("L1", "valley", "H100", 40 * MINUTE, MON, MON)]
    correction = correct(complete, whole, billed, owner)
    assert [(line.kind, str(line.amount)) for line in correction] == [
        ("gpu_time", "1.20"),
        ("preemption_credit", "-1.20"),
    ]
    again = correct(complete, whole, [*billed, *correction], owner)
    assert again == []  # waived once: a re-run changes nothing


@settings(max_examples=80, deadline=None)
@given(
    leases=st.lists(
        st.tuples(
            st.integers(1, 6 * 60),  # minutes used
            st.integers(0, 10),  # minutes of notice given
            st.sampled_from(["valley", "on_demand"]),
            st.integers(0, 3 * KWH),
        ),
        min_size=1,
        max_size=6,
    ),
    unhealthy_permille=st.integers(0, 1000),
    split=st.integers(1, 3),
)
def test_market_credits_never_exceed_the_charge_and_rerating_is_idempotent(leases, unhealthy_permille, split):
    usage, quantities, owner = [], [], {}
    for number, (minutes, notice, plan, mj) in enumerate(leases):
        lease = f"L{number}"
        ms = minutes * MINUTE
        parts = [ms // split] * (split - 1) + [ms - (ms // split) * (split - 1)]
        usage += [lease_use(lease, part, plan, mj // split) for part in parts]
        quantities.append(LeaseQuantity(lease, plan, "H100", ms, MON, MON))
        owner[lease] = Preemption(lease, MON, MON + ms - notice * MINUTE, MON + ms)
    leased = sum(q.allocated_gpu_ms for q in quantities if q.plan == "on_demand")
    health = {"on_demand": Availability(leased, leased * unhealthy_permille // 1000)}
    invoice = rate(usage, quantities, owner, health, end=MON + 48 * HOUR)
    charges = sum(line.amount for line in invoice.lines if line.kind in ("gpu_time", "gpu_time_rounding", "energy"))
    credits = sum(line.amount for line in invoice.lines if line.kind in ("preemption_credit", "sla_credit"))
    assert credits <= 0 and -credits <= charges  # never negative beyond the charge
    assert invoice.subtotal >= 0
    for plan in ("valley", "on_demand"):
        # the SLA credit is capped at what is left of the plan's charge (its compute lines and the waivers and
        # credits of its preempted leases, which take their energy too, so that charge may itself be below 0)
        plan_charge = sum(
            line.amount
            for line in invoice.lines
            if line.plan == plan and line.kind in ("gpu_time", "gpu_time_rounding", "preemption_credit")
        )
        sla = [line.amount for line in invoice.lines if line.plan == plan and line.kind == "sla_credit"]
        assert not sla or (plan_charge > 0 and -plan_charge <= sla[0] < 0)
    assert rate(list(reversed(usage)), quantities, owner, health, end=MON + 48 * HOUR) == invoice
    assert replace(invoice) == rate(usage, quantities, owner, health, end=MON + 48 * HOUR)


@settings(max_examples=60, deadline=None)
@given(
    used_minutes=st.lists(st.integers(1, 120), min_size=1, max_size=5),
    late_share=st.integers(0, 100),
    unhealthy_permille=st.integers(0, 100),
)
def test_waivers_and_credits_are_idempotent_across_reruns_and_corrections(used_minutes, late_share, unhealthy_permille):
    """Bill part of the usage, then correct with all of it: the invoice and its corrections sum to the
    complete rating, line for line; correcting again gives nothing."""
    owner, complete, first, leases_all, leases_first = {}, [], [], [], []
    for number, minutes in enumerate(used_minutes):
        lease, plan = f"L{number}", ("valley", "on_demand")[number % 2]
        ms = minutes * MINUTE
        early = ms * (100 - late_share) // 100
        owner[lease] = Preemption(lease, MON, MON + ms - 60_000, MON + ms)  # a minute's notice: short
        complete.append(lease_use(lease, ms, plan, mj=ms * 385))
        leases_all.append(LeaseQuantity(lease, plan, "H100", ms, MON, MON))
        if early:
            first.append(lease_use(lease, early, plan, mj=early * 385))
            leases_first.append(LeaseQuantity(lease, plan, "H100", early, MON, MON))
    leased = sum(q.allocated_gpu_ms for q in leases_all if q.plan == "on_demand")
    health = {"on_demand": Availability(leased, leased * unhealthy_permille // 1000)}

    billed = rate(first, leases_first, owner, health).lines
    correction = correct(complete, leases_all, billed, owner, health)
    assert correct(complete, leases_all, [*billed, *correction], owner, health) == []  # never waived or credited twice
    whole = rate(complete, leases_all, owner, health)
    pretax = [line for line in whole.lines if line.kind != "tax"]
    assert sum(line.amount for line in [*billed, *correction] if line.kind != "tax") == sum(
        line.amount for line in pretax
    )
