"""Budgets on a real ledger (SQLite and PostgreSQL), lake and HTTP receiver: a tenant crossing 50, 80
and 100 % gets exactly three signed webhooks, in order; a re-run, a restart of the deliverer, and a
correction that lowers the spend and raises it again send none again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from billing.ledger.db import Ledger
from billing.market import webhooks
from billing.spend.alerts import due_alerts
from billing.spend.budgets import BudgetError, alerts_of, parse_thresholds, refresh_and_alert, set_budget
from schemas.usage import KIND_ADJUSTMENT
from tests.support.billing_fixtures import HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, minutes, usage_row
from tests.support.webhook_receiver import SignedReceiver, signed_receiver

MONDAY = NOV_1 + 24 * HOUR + 8 * HOUR  # Monday 2026-11-02 08:00 UTC: peak, 3.00 per GPU-hour
AFTER = NOV_1 + 30 * 24 * HOUR - 1  # November's last ms: the forecast is what was used


@pytest.fixture
def receiver() -> Iterator[SignedReceiver]:
    with signed_receiver() as state:
        yield state


def test_three_thresholds_three_signed_webhooks_in_order_and_never_again(
    billing_db_url: str, tmp_path: Path, receiver
) -> None:
    got, url = receiver.events, f"{receiver.url}/budget"
    usage = UsageWriter(tmp_path / "usage")
    ledger: Ledger = ledger_with(billing_db_url)
    with ledger.transaction() as session:
        view, secret = set_budget(session, "acme", "tenant", "10.00", [50, 80, 100], url)
    assert secret is not None and view.budget_id == "acme/tenant"
    receiver.secrets["budget"] = secret

    def step(count_minutes: int, at: int) -> list[str]:
        usage.write(minutes("acme", at, count_minutes))
        recorded = refresh_and_alert(ledger, usage.root, ["acme"], at_ms=AFTER)
        webhooks.deliver_due(ledger)
        return recorded

    assert len(step(100, MONDAY)) == 1  # 5.00: 50 %
    assert len(step(60, MONDAY + 100 * MINUTE)) == 1  # 8.00: 80 %
    assert len(step(40, MONDAY + 160 * MINUTE)) == 1  # 10.00: 100 %
    assert [(e["type"], e["data"]["threshold_percent"], e["data"]["spend"]) for e in got] == [
        ("budget.threshold_crossed", 50, "5.00"),
        ("budget.threshold_crossed", 80, "8.00"),
        ("budget.threshold_crossed", 100, "10.00"),
    ]
    # a re-run and a deliverer restarted send nothing again
    assert refresh_and_alert(ledger, usage.root, ["acme"], at_ms=AFTER) == []
    assert webhooks.deliver_due(ledger) == (0, 0)
    # a correction lowers the spend under 100 % (9.00), later usage raises it again: no second alert
    usage.write([usage_row("acme", MONDAY, allocated_ms=-20 * MINUTE, kind=KIND_ADJUSTMENT, suffix="/fix")])
    assert refresh_and_alert(ledger, usage.root, ["acme"], at_ms=AFTER) == []
    assert step(30, MONDAY + 200 * MINUTE) == []
    webhooks.deliver_due(ledger)
    assert len(got) == 3
    with ledger.transaction() as session:
        listed = alerts_of(session, "acme", "2026-11")
        finance = alerts_of(session, "acme", "2026-11", owners=("finance",))
    assert [a["threshold_percent"] for a in listed] == [50, 80, 100] and finance == []
    # the portal's month page lists them for the tenant
    from fastapi.testclient import TestClient

    from billing.web.app import create_app
    from billing.web.auth import create_key

    with ledger.transaction() as session:
        key = create_key(session, "test", "tenant", "acme")
    with TestClient(create_app(ledger, usage.root)) as client:
        page = client.get("/", params={"period": "2026-11"}, headers={"Authorization": f"Bearer {key}"})
    assert page.status_code == 200, page.text
    assert page.text.count("of the tenant budget (10.00 USD) was reached") == 3
    ledger.dispose()


def test_a_forecast_alert_comes_before_the_crossing_and_each_fires_once():
    hundred = Decimal("100.00")
    due = due_alerts(
        amount=hundred, thresholds=[50, 80], spent=Decimal("40.00"), forecast=Decimal("90"), currency="USD"
    )
    assert due == [(50, "forecast", Decimal("50.00")), (80, "forecast", Decimal("80.00"))]
    due = due_alerts(amount=hundred, thresholds=[80, 50], spent=Decimal("50.00"), forecast=None, currency="USD")
    assert due == [(50, "crossed", Decimal("50.00"))]


def test_budget_refusals_are_one_line(billing_db_url: str, capsys) -> None:
    ledger_with(billing_db_url).dispose()
    with pytest.raises(BudgetError, match="distinct whole percentages"):
        parse_thresholds("50,50")
    common = ["--db", billing_db_url]
    assert billing_main(["budgets", "set", "--tenant", "acme", "--amount", "5000.001", *common]) == 2
    assert "budget amount '5000.001'" in capsys.readouterr().err
    assert billing_main(["budgets", "set", "--tenant", "acme", "--amount", "-1", *common]) == 2
    assert "must be above zero" in capsys.readouterr().err
    assert billing_main(["budgets", "set", "--tenant", "acme", "--amount", "5000.00", *common]) == 0
    assert "budget acme/finance: 5000.00 USD a period, at 50 %, 80 %, 100 %" in capsys.readouterr().out
    assert billing_main(["budgets", "list", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)[0]["owner"] == "finance"
