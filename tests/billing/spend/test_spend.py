"""Month-to-date spend on a real ledger (SQLite and PostgreSQL) and lake: the figure is the period's
draft as the close would issue it, so the finalized invoice equals the last month-to-date figure taken
after the last usage, to the cent, on a tiered card and on a committed one; the CLI and the forecast."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from billing.invoicing.service import finalize, get_invoice, run_period
from billing.spend.service import month_to_date, refresh
from tests.support.billing_fixtures import HOUR, NOV_1, UsageWriter, ledger_with, minutes

DAY = 24 * HOUR
TIERED = """
name = "tiered"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"
increment_s = 1
minimum_s = 0
[calendar]
timezone = "UTC"
[gpu_hour."*".on_demand]
"*" = { mode = "graduated", tiers = [{ up_to = "2", price = "3.00" }, { price = "2.00" }] }
[tax]
"*" = "0.10"
"""
COMMITTED = TIERED.replace('name = "tiered"', 'name = "committed"').replace(
    "minimum_s = 0", 'minimum_s = 0\ncommitment = "50.00"\ndiscount_percent = "10"'
)


@pytest.mark.parametrize("card, totals", [(TIERED, ("8.00", "0.80", "8.80")), (COMMITTED, ("50.00", "5.00", "55.00"))])
def test_the_invoice_equals_the_last_month_to_date_figure(billing_db_url: str, tmp_path: Path, card, totals):
    """3 GPU-hours by 10 November: 2 h at 3.00 + 1 h at 2.00 = 8.00 (+10 % tax). Committed: 8.00 less
    10 % is 7.20, under the 50.00 commitment: a true-up to 50.00."""
    usage = UsageWriter(tmp_path / "usage")
    ledger = ledger_with(billing_db_url, card)
    usage.write(minutes("acme", NOV_1 + 2 * DAY, 60))
    mid = NOV_1 + 10 * DAY
    refresh(ledger, usage.root, ["acme"], at_ms=mid)
    with ledger.transaction() as session:
        early = month_to_date(session, "acme", at_ms=mid)
    assert (early.period, early.status, early.subtotal) == (
        "2026-11",
        "draft",
        Decimal("3.00") if card is TIERED else Decimal("50.00"),
    )
    usage.write(minutes("acme", NOV_1 + 5 * DAY, 120))  # the rest of the month's usage
    refresh(ledger, usage.root, ["acme"], at_ms=mid)
    with ledger.transaction() as session:
        last = month_to_date(session, "acme", at_ms=mid)
    assert (str(last.subtotal), str(last.tax), str(last.total)) == totals
    # the forecast: 3 h in 10 of 30 days scales the usage lines x 3 (8.00 -> 24.00), less 10 %, at least 50.00
    assert last.forecast_subtotal == (Decimal("24.00") if card is TIERED else Decimal("50.00"))
    # the close: the same path, nothing new: the draft is finalized as it stood
    report = run_period(ledger, usage.root, "2026-11", "close")
    assert report.nothing_to_do
    invoice = finalize(ledger, "close", last.invoice_id)
    with ledger.transaction() as session:
        issued = get_invoice(session, invoice.id)
        assert (issued.subtotal, issued.tax, issued.total) == (last.subtotal, last.tax, last.total)
        assert [(line.kind, line.amount) for line in sorted(issued.lines, key=lambda ln: ln.position)] == [
            (line.kind, line.amount) for line in last.lines
        ]
        after = month_to_date(session, "acme", "2026-11", at_ms=mid)
    assert after.status == "finalized" and after.forecast_subtotal is None
    ledger.dispose()


def test_the_cli_prints_month_to_date_and_the_forecast(billing_db_url: str, tmp_path: Path, capsys):
    usage = UsageWriter(tmp_path / "usage")
    ledger_with(billing_db_url, TIERED).dispose()
    usage.write(minutes("acme", NOV_1 + 2 * DAY, 60))
    common = ["--db", billing_db_url, "--usage-dir", str(usage.root)]
    assert billing_main(["spend", "--tenant", "acme", "--period", "2026-11", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "none"  # not rated yet
    assert billing_main(["run", "--period", "2026-11", *common]) == 0
    capsys.readouterr()
    assert billing_main(["spend", "--tenant", "acme", "--period", "2026-11", "--json", *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["status"], shown["subtotal"], shown["total"]) == ("draft", "3.00", "3.30")
    assert shown["forecast_method"].startswith("month-to-date run rate")
    assert billing_main(["spend", "--tenant", "acme", "--period", "2026-11", *common]) == 0
    text = capsys.readouterr().out
    assert text.startswith("acme 2026-11 month to date (as of ")
    assert "forecast 3.00 USD before tax" in text  # November is over: on course for what it used
    assert billing_main(["spend", "--tenant", "nobody", *common]) == 2
    assert capsys.readouterr().err.strip() == "wattmeter-billing: unknown tenant 'nobody'"
