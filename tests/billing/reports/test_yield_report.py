"""The operator's fleet yield report: the pure core by hand-computed examples and a property
(revenue by model adds up to the invoices exactly), then the adapter over a small real world
(usage through the real Parquet sink, invoices run and finalized, the hourly rollup), and the CLI."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from billing.cli import main as billing_main
from billing.invoicing.service import finalize, run_period
from billing.ledger.db import Ledger
from billing.ledger.models import Invoice
from billing.pricing.calendar import TouCalendar
from billing.pricing.errors import PricingError
from billing.pricing.money import largest_remainder
from billing.readmodel.hourly import rollup_period
from billing.reports import fleet_calendar as fc
from billing.reports import revenue as rev
from billing.reports import yield_render as render
from billing.reports import yield_report as y
from billing.reports.errors import ReportError
from billing.reports.service import fleet_window, yield_report
from schemas.usage import KIND_IDLE
from tests.support.billing_fixtures import DEC_1, HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, minutes

MON_NOV_2 = NOV_1 + 24 * HOUR  # the simple card: valley 00:00-06:00 UTC on weekdays, all weekend
TUE_NOV_3 = MON_NOV_2 + 24 * HOUR
WED_NOV_4 = TUE_NOV_3 + 24 * HOUR
THU_NOV_5 = WED_NOV_4 + 24 * HOUR
UTC_VALLEY = TouCalendar(timezone="UTC", weekday={"valley": ((0, 6),)}, weekend={"valley": ((0, 24),)})


def fleet_calendar(calendar: TouCalendar = UTC_VALLEY, start: int = NOV_1, end: int = DEC_1) -> fc.FleetCalendar:
    return fc.FleetCalendar("card", (fc.CalendarSpan(start, end, calendar, "card v1"),), frozenset({"valley"}), "test")


def invoice(label: str, currency: str, *lines: tuple[str, str, str] | tuple[str, str, str, int]) -> rev.InvoiceRevenue:
    """lines: (kind, model, amount[, GPU-ms]); the subtotal is the sum of the pre-tax ones."""
    parsed = tuple(
        rev.RevenueLine(line[0], line[1], Decimal(line[2]), line[3] if len(line) > 3 else 0) for line in lines
    )
    subtotal = sum((line.amount for line in parsed if line.kind not in rev.NOT_REVENUE), Decimal(0))
    return rev.InvoiceRevenue(hash(label) % 1000, label, "t", currency, "finalized", subtotal, parsed)


# -- the pure core -----------------------------------------------------------------------------


def test_largest_remainder_is_exact_and_breaks_ties_by_name():
    assert largest_remainder(100, {"c": 1, "a": 1, "b": 1}) == {"a": 34, "b": 33, "c": 33}
    assert largest_remainder(-100, {"c": 1, "a": 1, "b": 1}) == {"a": -34, "b": -33, "c": -33}
    assert largest_remainder(31, {"H100": 300, "A100": 100}) == {"A100": 8, "H100": 23}  # 7.75 / 23.25
    assert largest_remainder(5, {"x": 0, "y": 3}) == {"x": 0, "y": 5}
    with pytest.raises(PricingError):
        largest_remainder(5, {"x": 0})


def test_revenue_by_model_shares_model_less_lines_by_largest_remainder():
    """H100 lines 3.00, A100 1.00; energy 0.10 and discount -0.41 have no model: -0.31 shared 3:1
    -> -0.2325 / -0.0775 -> floors 23 / 7 cents, the cent left to the larger remainder (A100):
    H100 3.00 - 0.23 = 2.77, A100 1.00 - 0.08 = 0.92; tax and credit are not revenue."""
    revenue = rev.attribute_revenue(
        [
            invoice(
                "WM-1",
                "USD",
                ("gpu_time", "H100", "2.00"),
                ("gpu_time", "H100", "1.00"),
                ("gpu_time", "A100", "1.00"),
                ("energy", "", "0.10"),
                ("discount", "", "-0.41"),
                ("tax", "", "0.37"),
                ("credit", "", "-4.06"),
            ),
        ]
    )
    assert revenue.by_model == {"A100": {"USD": Decimal("0.92")}, "H100": {"USD": Decimal("2.77")}}
    assert revenue.invoiced == {"USD": Decimal("3.69")} and revenue.unallocated == {}


def test_revenue_in_two_currencies_is_never_added_and_a_true_up_alone_stays_unallocated():
    revenue = rev.attribute_revenue(
        [
            invoice("WM-1", "USD", ("gpu_time", "H100", "10.00"), ("commitment_true_up", "", "5.00")),
            invoice("WM-2", "JPY", ("gpu_time", "H100", "1000"), ("gpu_time", "L40S", "501"), ("energy", "", "3")),
            invoice("WM-3", "USD", ("commitment_true_up", "", "50.00")),  # no usage at all
            # zero-priced GPU time: shared by GPU-ms instead (1:3)
            invoice(
                "WM-4",
                "USD",
                ("gpu_time", "A100", "0.00", 1000),
                ("gpu_time", "L40S", "0.00", 3000),
                ("energy", "", "0.04"),
            ),
        ]
    )
    assert revenue.by_model == {
        "A100": {"USD": Decimal("0.01")},
        "H100": {"JPY": Decimal("1002"), "USD": Decimal("15.00")},  # 3 yen 1000:501 -> 1.998 / 1.002 -> 2 / 1
        "L40S": {"JPY": Decimal("502"), "USD": Decimal("0.03")},
    }
    assert revenue.unallocated == {"USD": Decimal("50.00")}
    assert revenue.invoiced == {"JPY": Decimal("1504"), "USD": Decimal("65.04")}


def test_an_invoice_whose_lines_do_not_make_its_subtotal_is_refused():
    bad = rev.InvoiceRevenue(
        1, "WM-9", "acme", "USD", "finalized", Decimal("1.00"), (rev.RevenueLine("gpu_time", "H100", Decimal("0.99")),)
    )
    with pytest.raises(ReportError, match="WM-9 of tenant acme"):
        rev.attribute_revenue([bad])


MODELS = st.sampled_from(["H100", "A100", "L40S", ""])
KINDS = st.sampled_from(["gpu_time", "gpu_time_rounding", "energy", "discount", "commitment_true_up", "tax", "credit"])


@st.composite
def invoices(draw: st.DrawFn) -> list[rev.InvoiceRevenue]:
    out = []
    for number in range(draw(st.integers(0, 8))):
        currency = draw(st.sampled_from(["USD", "JPY", "BHD"]))
        places = {"USD": 2, "JPY": 0, "BHD": 3}[currency]
        lines = []
        for _ in range(draw(st.integers(0, 7))):
            kind, model = draw(KINDS), draw(MODELS)
            units = draw(st.integers(-50_000, 500_000))
            lines.append(
                (
                    kind,
                    model if kind.startswith("gpu") else "",
                    str(Decimal(units).scaleb(-places)),
                    draw(st.integers(0, 10**9)),
                )
            )
        out.append(invoice(f"WM-{number}", currency, *lines))
    return out


@settings(max_examples=300, deadline=None)
@given(invoices())
def test_property_revenue_by_model_sums_to_the_invoices_exactly(batch: list[rev.InvoiceRevenue]):
    revenue = rev.attribute_revenue(batch)
    for currency, invoiced in revenue.invoiced.items():
        by_model = sum((money.get(currency, Decimal(0)) for money in revenue.by_model.values()), Decimal(0))
        assert by_model + revenue.unallocated.get(currency, Decimal(0)) == invoiced
        assert invoiced == sum((i.subtotal for i in batch if i.currency == currency), Decimal(0))
    # and the report keeps it: fleet revenue == the invoices, per currency
    report = y.build_report(
        period="2026-11",
        timezone="UTC",
        start_ms=NOV_1,
        end_ms=DEC_1,
        usage=y.FleetUsage((), {}, 0),
        invoices=batch,
        calendar=None,
    )
    assert dict(report.fleet.revenue) == dict(revenue.invoiced)


def hour_row(tenant: str, gpu: str, model: str, hour: int, allocated: int = HOUR, busy: int = 0, energy: int = 0):
    return y.HourRow(tenant, gpu, model, hour, allocated, busy, energy)


def test_hand_computed_report():
    """H100: GPU-1 leased by acme Mon 05:00 (valley) and 06:00 (peak), busy half of it, 0.5 kWh each
    hour; idle 07:00 (0.1 kWh). A100: GPU-2 idle Tue 00:00-02:00 (valley), leased 02:00 (valley),
    GPU-3 idle Wed 10:00 for 30 minutes. Rows outside the window (December) do not count.
    Revenue: H100 4.20 + energy 0.18 -> 4.38; A100 1.20."""
    rows = [
        hour_row("acme", "GPU-1", "H100", MON_NOV_2 + 5 * HOUR, busy=HOUR // 2, energy=1_800_000_000),
        hour_row("acme", "GPU-1", "H100", MON_NOV_2 + 6 * HOUR, busy=HOUR // 2, energy=1_800_000_000),
        hour_row("", "GPU-1", "H100", MON_NOV_2 + 7 * HOUR, busy=0, energy=360_000_000),
        hour_row("", "GPU-2", "A100", TUE_NOV_3, busy=HOUR // 4),
        hour_row("", "GPU-2", "A100", TUE_NOV_3 + HOUR),
        hour_row("beta", "GPU-2", "A100", TUE_NOV_3 + 2 * HOUR, busy=HOUR),
        hour_row("", "GPU-3", "A100", WED_NOV_4 + 10 * HOUR, allocated=30 * MINUTE),
    ]
    december = [hour_row("acme", "GPU-9", "H100", DEC_1, busy=HOUR)]
    usage = y.summarize(rows)
    assert usage.gpus == {"A100": 2, "H100": 1} and usage.fleet_gpus == 3
    report = y.build_report(
        period="2026-11",
        timezone="UTC",
        start_ms=NOV_1,
        end_ms=DEC_1,
        usage=y.FleetUsage(usage.totals + y.summarize(december).totals, usage.gpus, usage.fleet_gpus),
        invoices=[
            invoice(
                "WM-1",
                "USD",
                ("gpu_time", "H100", "3.00"),
                ("gpu_time", "H100", "1.20"),
                ("energy", "", "0.09"),
                ("energy", "", "0.09"),
                ("tax", "", "0.44"),
            ),
            invoice("WM-2", "USD", ("gpu_time", "A100", "1.20")),
        ],
        calendar=fleet_calendar(),
    )
    h100, a100, fleet = report.model("H100"), report.model("A100"), report.fleet
    assert (h100.gpus, h100.available_ms, h100.leased_ms, h100.idle_ms) == (1, 3 * HOUR, 2 * HOUR, HOUR)
    assert h100.utilization == Fraction(1, 2) and h100.energy_mj == 3_960_000_000  # 1.1 kWh
    assert h100.busy_hours_per_kwh == Fraction(1, 1) / Fraction(11, 10)
    assert (h100.valley_leased_ms, h100.valley_available_ms, h100.valley_share) == (HOUR, HOUR, 1)
    assert h100.revenue == {"USD": Decimal("4.38")}
    assert h100.revenue_per_gpu("USD") == Fraction(438, 100)
    assert h100.revenue_per_gpu_hour("USD") == Fraction(146, 100)
    assert h100.revenue_per_kwh("USD") == Fraction(438, 110)
    assert (a100.gpus, a100.available_ms, a100.leased_ms, a100.idle_ms) == (2, 7 * HOUR // 2, HOUR, 5 * HOUR // 2)
    assert a100.utilization == 1 and a100.busy_ms == HOUR + HOUR // 4
    assert (a100.valley_leased_ms, a100.valley_available_ms, a100.valley_share) == (HOUR, 3 * HOUR, Fraction(1, 3))
    assert a100.revenue_per_kwh("USD") is None and a100.busy_hours_per_kwh is None  # no energy metered
    assert a100.revenue_per_gpu_hour("USD") == Fraction(120, 350)
    assert (fleet.gpus, fleet.available_ms, fleet.leased_ms, fleet.valley_share) == (
        3,
        13 * HOUR // 2,
        3 * HOUR,
        Fraction(1, 2),
    )
    assert fleet.revenue == {"USD": Decimal("5.58")} and fleet.leased_share == Fraction(6, 13)
    assert (report.hours, report.valley_hours, report.split_hours) == (720, 21 * 6 + 9 * 24, 0)

    data = render.to_json(report)
    assert data["fleet"]["revenue"]["USD"] == {
        "revenue": "5.58",
        "per_gpu": "1.8600",
        "per_gpu_hour_available": "0.8585",
        "per_kwh": "5.0727",
    }
    assert data["models"][0]["model"] == "A100" and data["models"][0]["revenue"]["USD"]["per_kwh"] is None
    assert data["models"][1]["utilization"] == "0.500000" and data["models"][1]["energy_kwh"] == "1.100000"
    assert json.loads(json.dumps(data)) == data
    rows_csv = list(csv.DictReader(io.StringIO(render.csv_text(report))))
    assert [r["model"] for r in rows_csv] == ["A100", "H100", "*"]
    assert rows_csv[2]["revenue_per_gpu_hour_available"] == "0.8585" and rows_csv[2]["valley_share_sold"] == "0.500000"
    table = render.text(report)
    assert "fleet" in table and "50.0 %" in table and "5.58" in table


def test_hours_astride_a_valley_boundary_count_in_neither_valley_figure():
    """A calendar in Asia/Kolkata (UTC+05:30): valley 00:00-06:00 local = 18:30-00:30 UTC, so two
    UTC hours a day are cut by a boundary; rows in them count as available but in no valley figure."""
    kolkata = TouCalendar(timezone="Asia/Kolkata", weekday={"valley": ((0, 6),)}, weekend={"valley": ((0, 6),)})
    calendar = fleet_calendar(kolkata)
    intervals = fc.valley_intervals(calendar.spans, calendar.valley_periods)
    classes = fc.hour_classes(MON_NOV_2, MON_NOV_2 + 24 * HOUR, intervals)
    assert [h for h, c in classes.items() if c == fc.SPLIT] == [MON_NOV_2, MON_NOV_2 + 18 * HOUR]
    assert [h for h, c in classes.items() if c == fc.VALLEY] == [MON_NOV_2 + h * HOUR for h in range(19, 24)]
    rows = [hour_row("acme", "G", "H100", MON_NOV_2 + 18 * HOUR), hour_row("", "G", "H100", MON_NOV_2 + 19 * HOUR)]
    report = y.build_report(
        period="2026-11",
        timezone="UTC",
        start_ms=NOV_1,
        end_ms=DEC_1,
        usage=y.summarize(rows),
        invoices=[],
        calendar=calendar,
    )
    row = report.model("H100")
    assert (row.split_ms, row.valley_available_ms, row.valley_leased_ms, row.valley_share) == (HOUR, HOUR, 0, 0)
    assert report.split_hours == 60 and any("astride" in note for note in report.notes)
    with pytest.raises(ReportError, match="whole UTC hours"):
        fc.hour_classes(MON_NOV_2 + 30 * MINUTE, MON_NOV_2 + 24 * HOUR, intervals)


def test_a_calendar_on_new_york_time_follows_dst():
    """New York valley 00:00-06:00 local: 04:00-10:00 UTC in summer time (to 1 Nov), 05:00-11:00 after."""
    new_york = TouCalendar(timezone="America/New_York", weekday={"valley": ((0, 6),)}, weekend={"valley": ((0, 6),)})
    calendar = fleet_calendar(new_york, NOV_1 - 24 * HOUR, DEC_1)
    classes = fc.hour_classes(NOV_1 - 24 * HOUR, NOV_1 + 48 * HOUR, fc.valley_intervals(calendar.spans, {"valley"}))
    valley = [(h - NOV_1) // HOUR for h, c in classes.items() if c == fc.VALLEY]
    # 31 Oct (EDT): 04..09; 1 Nov: local 00:00-02:00 EDT is 04:00-06:00 UTC, then 01:00-06:00 EST 06:00-11:00
    assert valley == [h - 24 for h in range(4, 10)] + list(range(4, 11)) + [24 + h for h in range(5, 11)]


def test_calendar_spans_take_each_version_from_its_instant():
    later = TouCalendar(timezone="UTC")
    spans = fc.calendar_spans([(NOV_1 + 10 * 24 * HOUR, 2, later), (0, 1, UTC_VALLEY)], NOV_1, DEC_1)
    assert [(lo, hi, v) for lo, hi, v, _ in spans] == [(NOV_1, NOV_1 + 240 * HOUR, 1), (NOV_1 + 240 * HOUR, DEC_1, 2)]
    only_later = fc.calendar_spans([(NOV_1 + 10 * 24 * HOUR, 2, later)], NOV_1, DEC_1)
    assert [(lo, hi, v) for lo, hi, v, _ in only_later] == [(NOV_1, DEC_1, 2)]  # the first also covers before


# -- the adapter over a small real world -------------------------------------------------------


def idle(gpu: str, model: str, start: int, count: int, energy_mj: int = 0) -> list[dict]:
    return minutes("", start, count, gpu=gpu, model=model, plan="", kind=KIND_IDLE, energy_mj=energy_mj)


def build_world(url: str, root: Path) -> Ledger:
    """acme (tax XX) leases GPU-1 (H100) Mon 05:00-07:00, 0.01 kWh a minute, GPU-1 idle 07:00-08:00
    at 0.005 kWh a minute; beta leases GPU-2 (A100) Tue 02:00-03:00, idle 00:00-02:00; GPU-3 (A100)
    idle Wed 10:00-10:30; gamma leases GPU-4 (H100) Thu 12:00-12:30 and its invoice stays a draft.
    Invoices: acme 3.00 + 1.20 + 0.09 + 0.09 = 4.38 (+0.44 tax), beta 1.20, gamma 1.50 (draft)."""
    usage = UsageWriter(root)
    usage.write(minutes("acme", MON_NOV_2 + 5 * HOUR, 120, gpu="GPU-1", model="H100", energy_mj=36_000_000))
    usage.write(
        idle("GPU-1", "H100", MON_NOV_2 + 7 * HOUR, 60, energy_mj=18_000_000) + idle("GPU-2", "A100", TUE_NOV_3, 120)
    )
    usage.write(minutes("beta", TUE_NOV_3 + 2 * HOUR, 60, gpu="GPU-2", model="A100"))
    usage.write(idle("GPU-3", "A100", WED_NOV_4 + 10 * HOUR, 30))
    usage.write(minutes("gamma", THU_NOV_5 + 12 * HOUR, 30, gpu="GPU-4", model="H100"))
    usage.write(minutes("acme", DEC_1 + 5 * HOUR, 60, gpu="GPU-1", model="H100"))  # December: not this report's
    ledger = ledger_with(url, tenants={"acme": {"tax_jurisdiction": "XX"}, "beta": {}, "gamma": {}})
    report = run_period(ledger, root, "2026-11", "test")
    for outcome in report.outcomes:
        if outcome.tenant_id != "gamma":
            finalize(ledger, "test", outcome.invoice_id)
    rollup_period(ledger, root, "2026-11")
    rollup_period(ledger, root, "2026-12")
    return ledger


def test_the_report_over_a_real_world_equals_its_invoices(billing_db_url: str, tmp_path: Path):
    ledger = build_world(billing_db_url, tmp_path / "usage")
    report = yield_report(ledger, "2026-11")
    with ledger.transaction() as session:
        issued = session.scalars(select(Invoice).where(Invoice.period == "2026-11", Invoice.status == "finalized"))
        invoiced = sum((i.subtotal for i in issued), Decimal(0))
    assert invoiced == Decimal("5.58") and report.fleet.revenue == {"USD": invoiced}
    assert sum(m.revenue_of("USD") for m in report.models) == invoiced
    assert report.calendar is not None and report.calendar.card == "simple" and "3 of 3" in report.calendar.chosen_by
    h100, a100, fleet = report.model("H100"), report.model("A100"), report.fleet
    for row in (h100, a100, fleet):
        assert row.leased_ms + row.idle_ms == row.available_ms
        assert row.utilization == Fraction(row.busy_leased_ms, row.leased_ms) == Fraction(1, 2)  # busy = half
    assert (h100.gpus, h100.leased_ms, h100.idle_ms, h100.energy_mj) == (2, 5 * HOUR // 2, HOUR, 5_400_000_000)
    assert (a100.gpus, a100.leased_ms, a100.idle_ms) == (2, HOUR, 5 * HOUR // 2)
    assert (fleet.gpus, fleet.available_ms, fleet.valley_available_ms, fleet.valley_leased_ms) == (
        4,
        7 * HOUR,
        4 * HOUR,
        2 * HOUR,
    )
    assert h100.revenue == {"USD": Decimal("4.38")} and a100.revenue == {"USD": Decimal("1.20")}
    assert h100.revenue_per_kwh("USD") == Fraction(438, 150)  # 1.5 kWh metered (no PUE)
    assert any("1 draft invoice(s)" in note for note in report.notes)

    with_drafts = yield_report(ledger, "2026-11", include_drafts=True)
    assert with_drafts.fleet.revenue == {"USD": Decimal("7.08")} and with_drafts.model("H100").revenue_of(
        "USD"
    ) == Decimal("5.88")
    assert not any("draft" in note for note in with_drafts.notes)


def test_the_cli_prints_text_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    url = f"sqlite:///{tmp_path}/billing.db"
    build_world(url, tmp_path / "usage").dispose()
    assert billing_main(["yield", "--period", "2026-11", "--db", url, "--csv", str(tmp_path / "y.csv")]) == 0
    out = capsys.readouterr().out
    assert "Fleet yield 2026-11" in out and "5.58" in out and "simple v1" in out
    rows = list(csv.DictReader((tmp_path / "y.csv").open()))
    assert [r["model"] for r in rows] == ["A100", "H100", "*"] and rows[2]["revenue"] == "5.58"
    assert billing_main(["yield", "--period", "2026-11", "--db", url, "--json", "--calendar-card", "simple"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fleet"]["revenue"]["USD"]["revenue"] == "5.58" and data["calendar"]["chosen_by"] == "--calendar-card"
    assert data["fleet"]["valley_share_sold"] == "0.500000"
    assert billing_main(["yield", "--period", "2026-13", "--db", url]) == 2
    assert billing_main(["yield", "--period", "2026-11", "--db", url, "--calendar-card", "nope"]) == 2
    assert billing_main(["yield", "--period", "2026-11", "--db", url, "--timezone", "Asia/Kolkata"]) == 2
    err = capsys.readouterr().err
    assert "does not parse" in err and "unknown rate card 'nope'" in err and "whole UTC hour" in err


def test_hours_no_rollup_covered_are_named(tmp_path: Path):
    """Tenants in New York: the rollup of 2026-11 covers 04:00Z 1 Nov to 05:00Z 1 Dec; the UTC
    month's first four hours belong to October's rollup, which was never run."""
    url = f"sqlite:///{tmp_path}/billing.db"
    root = tmp_path / "usage"
    UsageWriter(root).write(minutes("acme", MON_NOV_2 + 5 * HOUR, 10, gpu="GPU-1"))
    ledger = ledger_with(url, tenants={"acme": {"timezone": "America/New_York"}})
    assert any("never rolled up" in note for note in yield_report(ledger, "2026-11").notes)
    rollup_period(ledger, root, "2026-11")
    notes = yield_report(ledger, "2026-11").notes
    assert notes == (
        "hours 2026-11-01T00:00:00Z..2026-11-01T04:00:00Z of the window are not rolled up: "
        "run `wattmeter-billing rollup --period 2026-10`",
    )
    assert yield_report(ledger, "2026-11", timezone="America/New_York").notes == ()
    assert fleet_window("2026-11", "America/New_York") == (NOV_1 + 4 * HOUR, DEC_1 + 5 * HOUR)


def test_the_cache_keeps_a_report_until_a_rollup_or_an_invoice_changes(tmp_path: Path):
    from billing.invoicing.service import void
    from billing.reports.service import YieldCache

    root = tmp_path / "usage"
    ledger = build_world(f"sqlite:///{tmp_path}/billing.db", root)
    cache = YieldCache()
    first = cache.get(ledger, "2026-11")
    assert cache.get(ledger, "2026-11") is first and cache.builds == 1
    assert cache.get(ledger, "2026-11", include_drafts=True) is not first and cache.builds == 2
    rollup_period(ledger, root, "2026-11")  # rebuilt: a new run stamp
    assert cache.get(ledger, "2026-11") is not first and cache.builds == 3
    with ledger.transaction() as session:
        beta = session.scalars(select(Invoice).where(Invoice.tenant_id == "beta")).one()
    void(ledger, "test", beta.id, "wrong rate")  # an invoice changed: audited
    assert cache.get(ledger, "2026-11").fleet.revenue == {"USD": Decimal("4.38")} and cache.builds == 4
