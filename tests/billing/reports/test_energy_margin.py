"""Energy cost and margin in the yield report, by hand, for a two-period utility tariff across the
day New York leaves daylight saving time (Sunday 2026-11-01 has 25 local hours)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from billing.invoicing.service import finalize_period, run_period
from billing.ledger.store import store_tariff
from billing.pricing.errors import RateCardError
from billing.pricing.tariffs import parse_tariff
from billing.readmodel.hourly import rollup_period
from billing.reports.service import yield_report
from billing.reports.yield_render import csv_rows, margin_json, to_json
from tests.support.billing_fixtures import HOUR, NOV_1, UsageWriter, ledger_with, minutes

TARIFF = """
name = "utility"
version = 1
effective_from = "2026-01-01T05:00:00Z"
currency = "USD"
pue = "1.5"
[calendar]
timezone = "America/New_York"
weekday = { offpeak = [[0, 7], [22, 24]] }
weekend = { offpeak = [[0, 7]] }
[energy_kwh]
offpeak = "0.06"
"*" = "0.14"
[demand]
per_kw_month = "12.50"
"""


def test_energy_cost_and_margin_by_hand_across_the_dst_day(billing_db_url: str, tmp_path: Path, capsys):
    """One GPU leased to acme for the UTC day 2026-11-01, 1 kWh metered each hour (24 kWh).

    The tariff's off-peak is 00:00-07:00 New York time on the weekend: on 1 November that is
    04:00Z..12:00Z, 8 UTC hours because 01:00-02:00 happens twice (EDT, then EST); the other 16 hours
    are peak. Energy cost = 1.5 x (8 x 0.06 + 16 x 0.14) = 1.5 x 2.72 = 4.08.
    Revenue (the simple card: a Sunday is all valley, 1.20 per GPU-hour, energy 0.10 x PUE 1.5):
    24 x 1.20 + 24 x 0.15 = 28.80 + 3.60 = 32.40. Margin 28.32; per GPU-hour and per kWh 28.32 / 24
    = 1.18. Every hour is valley on the simple card's calendar, so the valley figures are the same."""
    usage = UsageWriter(tmp_path / "usage")
    usage.write(minutes("acme", NOV_1, 24 * 60, energy_mj=60_000_000))
    ledger = ledger_with(billing_db_url)
    run_period(ledger, usage.root, "2026-11", "test")
    finalize_period(ledger, "test", "2026-11")
    rollup_period(ledger, usage.root, "2026-11")
    tariff = parse_tariff(TARIFF, "utility.toml")
    offpeak = [h for h in range(24) if tariff.calendar.period_at(NOV_1 + h * HOUR) == "offpeak"]
    assert offpeak == list(range(4, 12))  # 8 hours: the repeated 01:00 included
    with ledger.transaction() as session:
        store_tariff(session, "test", tariff)
    report = yield_report(ledger, "2026-11")
    fleet = report.margins[""]
    assert fleet.energy_cost == Fraction("4.08")
    assert (fleet.revenue, fleet.gross_margin) == (Decimal("32.40"), Fraction("28.32"))
    assert fleet.margin_per_gpu_hour == Fraction("1.18") and fleet.margin_per_kwh == Fraction("1.18")
    assert (fleet.valley_energy_cost, fleet.valley_revenue) == (Fraction("4.08"), Decimal("32.40"))
    assert fleet.valley_margin_per_gpu_hour == Fraction("1.18")
    assert report.margins["H100"].energy_cost == Fraction("4.08")
    shown = to_json(report)["energy"]
    assert shown["tariff"] == "utility v1" and shown["demand_per_kw_month"] == "12.50"
    assert shown["models"]["fleet"] == margin_json(fleet)
    assert margin_json(fleet)["gross_margin"] == "28.32" and margin_json(fleet)["margin_per_kwh"] == "1.1800"
    fleet_csv = [row for row in csv_rows(report) if row["model"] == "*"][0]
    assert (fleet_csv["energy_cost"], fleet_csv["gross_margin"], fleet_csv["valley_energy_cost"]) == (
        "4.08",
        "28.32",
        "4.08",
    )
    from fastapi.testclient import TestClient

    from billing.web.app import create_app
    from billing.web.auth import create_key

    with ledger.transaction() as session:
        key = create_key(session, "test", "operator")
    with TestClient(create_app(ledger, usage.root)) as client:
        page = client.get("/operator", params={"period": "2026-11"}, headers={"Authorization": f"Bearer {key}"})
    assert page.status_code == 200, page.text
    assert 'data-testid="energy-cost">$4.08<' in page.text and 'data-testid="gross-margin">$28.32<' in page.text
    assert billing_main(["yield", "--period", "2026-11", "--db", billing_db_url]) == 0
    assert "energy cost (utility v1): 4.08 USD; gross margin 28.32, 1.1800 per GPU-hour" in capsys.readouterr().out
    ledger.dispose()


def test_a_tariff_is_loaded_and_versioned_like_a_rate_card(billing_db_url: str, tmp_path: Path, capsys):
    ledger_with(billing_db_url).dispose()
    path = tmp_path / "utility.toml"
    path.write_text(TARIFF)
    common = ["--db", billing_db_url]
    assert billing_main(["tariffs", "load", str(path), *common]) == 0
    assert "tariff utility v1 (USD, PUE 1.5): loaded" in capsys.readouterr().out
    assert billing_main(["tariffs", "load", str(path), *common]) == 0
    assert "unchanged" in capsys.readouterr().out
    path.write_text(TARIFF.replace('"0.06"', '"0.07"'))
    assert billing_main(["tariffs", "load", str(path), *common]) == 2
    assert "exists with other content" in capsys.readouterr().err
    with pytest.raises(RateCardError, match="energy_kwh.night: not a period of its calendar"):
        parse_tariff(TARIFF.replace('offpeak = "0.06"', 'night = "0.06"'), "bad.toml")
