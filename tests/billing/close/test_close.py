"""The month close, run as finance runs it (`wattmeter-billing close`), killed after each step and
inside the push, then run again: it carries on, and nothing happens twice (gap-free numbers, one
finalize per invoice in the audit log, one Stripe invoice per wattmeter invoice in localstripe)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from billing.ledger.db import Ledger
from billing.ledger.models import AuditEntry, Invoice, MonthClose, StripeInvoiceSync
from deploy.local.stripe_peers import StripePeer, flush_localstripe
from tests.billing.payments.test_stripe_sync import stripe_state
from tests.support.billing_fixtures import HOUR, NOV_1, UsageWriter, ledger_with, minutes

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk_test_wattmeter"
MON_NOV_2 = NOV_1 + 24 * HOUR


def close(
    db: str, usage: Path, *extra: str, api_base: str, fault: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, WATTMETER_STRIPE_API_KEY=KEY, WATTMETER_STRIPE_API_BASE=api_base, WATTMETER_STRIPE_BACKOFF_S="0.01"
    )
    env.pop("WATTMETER_FAULT", None)
    if fault:
        env["WATTMETER_FAULT"] = fault
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "billing.cli",
            "close",
            "--period",
            "2026-11",
            "--db",
            db,
            "--usage-dir",
            str(usage),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path]:
    usage = UsageWriter(tmp_path / "usage")
    for n, tenant in enumerate(("acme", "beta", "gamma")):
        usage.write(minutes(tenant, MON_NOV_2 + (5 + n) * HOUR, 90, gpu=f"GPU-{n}", energy_mj=20_000_000))
    ledger_with(
        f"sqlite:///{tmp_path}/prepared.db", tenants={"acme": {"tax_jurisdiction": "XX"}, "beta": {}, "gamma": {}}
    ).dispose()
    return tmp_path / "prepared.db", tmp_path / "usage"


FAULTS = [
    "close-after:started",
    "close-after:rated",
    "close-after:reviewed",
    "stripe-call:1",
    "stripe-call:7",
    "close-after:finalized",
    "close-after:pushed",
]


def test_close_carries_on_after_a_crash_at_any_step(
    localstripe: StripePeer, prepared: tuple[Path, Path], tmp_path: Path
):
    db_file, usage = prepared
    for fault in FAULTS:
        flush_localstripe(localstripe.url)
        copy = tmp_path / f"{fault.replace(':', '-')}.db"
        shutil.copy(db_file, copy)
        db = f"sqlite:///{copy}"
        killed = close(db, usage, "--yes", api_base=localstripe.url, fault=fault)
        assert killed.returncode == 137, f"{fault}: {killed.returncode} {killed.stdout} {killed.stderr}"
        resumed = close(db, usage, "--yes", "--report-dir", str(tmp_path / "reports"), api_base=localstripe.url)
        assert resumed.returncode == 0, f"{fault}: {resumed.stdout} {resumed.stderr}"
        assert "reconciled: yes" in resumed.stdout and "invoices issued: 3" in resumed.stdout, resumed.stdout
        assert "Traceback" not in resumed.stderr
        ledger = Ledger(db)
        with ledger.transaction() as session:
            numbers = sorted(session.scalars(select(Invoice.number).where(Invoice.number.is_not(None))))
            assert numbers == ["WM-000001", "WM-000002", "WM-000003"], f"{fault}: {numbers}"
            finalizes = session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "invoice.finalize")
            )
            assert finalizes == 3, f"{fault}: {finalizes} finalizations"
            assert {s.state for s in session.scalars(select(StripeInvoiceSync))} == {"finalized"}
            assert session.get(MonthClose, "2026-11").step == "reconciled"
        ledger.dispose()
        state = stripe_state(localstripe)
        assert sorted(state["customers"]) == ["acme", "beta", "gamma"], f"{fault}: {state['customers']}"
        assert sorted(i["number"] for i in state["invoices"]) == numbers and state["pending"] == []
        # a third run does nothing at all
        again = close(db, usage, "--yes", api_base=localstripe.url)
        assert again.returncode == 0 and "skipped" not in again.stderr
        assert stripe_state(localstripe) == state
    assert (tmp_path / "reports" / "reconcile-2026-11.csv").exists()
    assert (tmp_path / "reports" / "reconcile-2026-11.html").exists()


def test_close_stops_at_review_without_yes_and_after_push_failures(prepared: tuple[Path, Path]):
    db_file, usage = prepared
    db = f"sqlite:///{db_file}"
    stopped = close(db, usage, api_base="http://127.0.0.1:9")  # no --yes, no terminal: stop at review
    assert stopped.returncode == 1 and "stopped at review" in stopped.stderr
    assert "3 draft(s), amount due" in stopped.stdout
    failed = close(db, usage, "--yes", api_base="http://127.0.0.1:9")  # Stripe unreachable
    assert failed.returncode == 1 and "push failure" in failed.stderr and "network" in failed.stderr
    ledger = Ledger(db)
    with ledger.transaction() as session:
        assert session.get(MonthClose, "2026-11").step == "finalized"
    ledger.dispose()
    status = close(db, usage, "--status", api_base="http://127.0.0.1:9")
    assert status.returncode == 0 and "close 2026-11: finalized" in status.stdout
