"""Helpers for the hostile-input tests of the finance CLI: a small world, the ledger's row counts
(to show that a refusal wrote nothing) and the shape of a refusal (exit 2, one line, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from billing.cli import main as billing_main
from billing.ledger.db import Ledger
from billing.ledger.models import AuditEntry, Contract, Invoice, Lease, LeaseOutbox, RateCard, RollupRun
from tests.support.billing_fixtures import HOUR, NOV_1, UsageWriter, ledger_with, minutes

MON_NOV_2 = NOV_1 + 24 * HOUR
BOUND = "outside 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z"
TABLES = (AuditEntry, Invoice, Lease, LeaseOutbox, RateCard, Contract, RollupRun)


def counts(db: str) -> dict[str, int]:
    ledger = Ledger(db)
    try:
        with ledger.transaction() as session:
            return {t.__name__: int(session.scalar(select(func.count()).select_from(t)) or 0) for t in TABLES}
    finally:
        ledger.dispose()


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> str:
    """Run the CLI; assert exit 2 and one line on stderr holding `message`; return that line."""
    assert billing_main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in captured.err, captured.err
    return lines[0]


def make_world(tmp_path: Path) -> tuple[str, UsageWriter]:
    """acme (UTC) and kaisha (Asia/Tokyo) on the simple card; 30 minutes of acme's usage in 2026-11."""
    usage = UsageWriter(tmp_path / "usage")
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 30))
    db = f"sqlite:///{tmp_path}/billing.db"
    ledger_with(db, tenants={"acme": {}, "kaisha": {"timezone": "Asia/Tokyo"}}).dispose()
    return db, usage
