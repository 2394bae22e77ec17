"""`invoices void` prints the invoice it voided (its lines load in a live session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from billing.invoicing.service import finalize, run_period
from billing.ledger.db import Ledger
from tests.support.billing_fixtures import UsageWriter
from tests.support.hostile_support import counts, make_world, refused


@pytest.fixture
def world(tmp_path: Path) -> tuple[str, UsageWriter]:
    return make_world(tmp_path)


def test_void_prints_the_voided_invoice_with_its_lines(world: tuple[str, UsageWriter], capsys):
    db, usage = world
    ledger = Ledger(db)
    invoice_id = next(o.invoice_id for o in run_period(ledger, usage.root, "2026-11", "test").outcomes if o.invoice_id)
    number = finalize(ledger, "test", invoice_id).number
    ledger.dispose()
    capsys.readouterr()
    assert billing_main(["invoices", "void", number, "--reason", "wrong tax", "--db", db, "--json"]) == 0
    captured = capsys.readouterr()
    voided = json.loads(captured.out)
    assert (voided["number"], voided["status"], voided["void_reason"]) == (number, "void", "wrong tax")
    assert voided["lines"][0]["kind"] == "gpu_time" and captured.err == ""
    # the second time: one line, nothing written
    before = counts(db)
    refused(capsys, ["invoices", "void", number, "--reason", "again", "--db", db], "only an issued invoice is voided")
    assert counts(db) == before


def test_void_in_text(world: tuple[str, UsageWriter], capsys):
    db, usage = world
    ledger = Ledger(db)
    invoice_id = next(o.invoice_id for o in run_period(ledger, usage.root, "2026-11", "test").outcomes if o.invoice_id)
    number = finalize(ledger, "test", invoice_id).number
    ledger.dispose()
    capsys.readouterr()
    assert billing_main(["invoices", "void", number, "--reason", "re-issue", "--db", db]) == 0
    assert capsys.readouterr().out == f"voided {number}: re-issue\n"
