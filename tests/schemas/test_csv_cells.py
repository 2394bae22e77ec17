"""CSV injection: every CSV wattmeter writes opens in a spreadsheet as text, never as a formula.

The hostile values come the ways they really do: a tenant row written before tenant ids were
validated (inserted straight into the ledger), a GPU uuid and a model from an agent's samples.
They travel through the real rating, rollup, statement, reconciliation and yield code into each CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from billing.invoicing.service import finalize, run_period
from billing.ledger.db import Ledger
from billing.ledger.models import Tenant
from billing.ledger.store import add_contract, store_rate_card
from billing.pricing.ratecards import parse_rate_card
from billing.readmodel.hourly import rollup_period
from billing.reconcile.report import csv_text as reconcile_csv
from billing.reconcile.service import reconcile
from billing.reports import yield_report as y
from billing.reports.service import yield_report
from billing.statements.statement import build_statement, render_csv
from deploy.local.demo import write_lease_file
from deploy.local.fleet import FleetPlan
from schemas.csv_cells import csv_cell
from schemas.leases import Lease
from tests.support.billing_fixtures import HOUR, NOV_1, SIMPLE_CARD, UsageWriter, minutes

MON_NOV_2 = NOV_1 + 24 * HOUR
HOSTILE_TENANT = '=HYPERLINK("evil.example","t3")'
HOSTILE_NAME = "+SUM(1,2)"
HOSTILE_GPU = "-GPU@evil"
HOSTILE_MODEL = "@SUM(A1:A9)"
HOSTILE_LEASE = "=lease"


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x","t3")', '\'=HYPERLINK("http://x","t3")'),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("-12.50", "-12.50"),  # wattmeter's own amounts stay numbers
        ("+3", "+3"),
        ("-1E-8", "-1E-8"),
        ("-.5", "-.5"),
        ("acme", "acme"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_a_cell_that_starts_like_a_formula_gets_a_quote_and_a_number_does_not(cell: str, written: str):
    assert csv_cell(cell) == written


def cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def assert_no_formula(text: str, *hostile: str) -> None:
    found = cells(text)
    formulas = [cell for cell in found if cell and csv_cell(cell) != cell]
    assert formulas == [], "cells a spreadsheet would evaluate"
    for value in hostile:
        assert "'" + value in found, value  # it is there, as text


@pytest.fixture
def hostile_world(tmp_path: Path) -> tuple[Ledger, UsageWriter]:
    usage = UsageWriter(tmp_path / "usage")
    usage.write(
        minutes(HOSTILE_TENANT, MON_NOV_2 + 8 * HOUR, 30, gpu=HOSTILE_GPU, model=HOSTILE_MODEL, lease=HOSTILE_LEASE)
    )
    ledger = Ledger(f"sqlite:///{tmp_path}/billing.db")
    card = parse_rate_card(SIMPLE_CARD, "test card")
    with ledger.transaction() as session:
        store_rate_card(session, "test", card)
        # a row from before tenant ids and names were validated
        session.add(
            Tenant(
                tenant_id=HOSTILE_TENANT,
                name=HOSTILE_NAME,
                currency="USD",
                timezone="UTC",
                tax_jurisdiction="*",
                contact_email=None,
                stripe_customer_id=None,
                created_ms=0,
            )
        )
        session.flush()
        add_contract(session, "test", HOSTILE_TENANT, card.name, card.effective_from_ms)
    outcome = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    finalize(ledger, "test", outcome.invoice_id)
    rollup_period(ledger, usage.root, "2026-11")
    return ledger, usage


def test_every_csv_wattmeter_writes_neutralises_formulas(hostile_world: tuple[Ledger, UsageWriter], tmp_path: Path):
    ledger, usage = hostile_world
    with ledger.transaction() as session:
        statement = build_statement(session, HOSTILE_TENANT, "2026-11")
    assert_no_formula(render_csv(statement), HOSTILE_TENANT, HOSTILE_NAME, HOSTILE_GPU, HOSTILE_MODEL)

    assert_no_formula(reconcile_csv(reconcile(ledger, usage.root, "2026-11")), HOSTILE_TENANT)

    report = yield_report(ledger, "2026-11", timezone="UTC", calendar_card="simple")
    assert_no_formula(y.csv_text(report), HOSTILE_MODEL)

    plan = FleetPlan(
        nodes=["n"],
        gpus_per_node=1,
        start_ms=NOV_1,
        ticks=1,
        leases=[Lease(HOSTILE_LEASE, "acme", HOSTILE_GPU, NOV_1, NOV_1 + HOUR)],
    )
    write_lease_file(plan, tmp_path / "leases.csv")
    assert_no_formula((tmp_path / "leases.csv").read_text(), HOSTILE_LEASE, HOSTILE_GPU)
