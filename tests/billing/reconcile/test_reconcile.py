"""Reconciliation on the real parts: usage written through the real Parquet sink, the billing
database on SQLite and PostgreSQL, Stripe as localstripe; no mocks.

The scenario (tenant acme, SIMPLE_CARD: peak 3.00 per GPU-hour, energy 0.10 per kWh x PUE 1.5,
1 s increment and 60 s minimum per lease, 10 % tax in XX; a 5.00 prepaid credit), November 2026:

- lease A (GPU-1), Mon 2 Nov 08:00-11:00: metered 08:00-09:00 and 10:00-11:00, each minute
  0.01 kWh; nothing 09:00-10:00 (an hour of no samples);
- lease B (GPU-2), 12:00:00-12:00:20: 20 s metered, billed the 60 s minimum;
- lease D (GPU-4), Wed 4 Nov 08:00-08:20: 30 minutes metered (a meter over-count; fixed later);
- November is invoiced and finalized (WM-000001): GPU time 9,020,000 ms = 7.5166... -> 7.52,
  rounding 40,000 ms = 0.0333... -> 0.03, energy 1.8 kWh -> 0.18, tax 10 % of 7.73 = 0.773 -> 0.77,
  credit -5.00, amount due 3.50;
- late: lease C (GPU-3), Tue 3 Nov 08:00-08:40: 30 minutes arrive after finalize -> a +1.50
  correction on December's invoice (WM-000002); then the meter fix of lease D (-10 minutes) ->
  credit note WM-CN-000001 (0.50) in January's run; then C's last 10 minutes, not invoiced yet.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
import requests
from sqlalchemy import select, text

from billing.invoicing.service import finalize, run_period
from billing.leases.service import open_lease
from billing.ledger.db import Ledger
from billing.ledger.models import Invoice, StripeInvoiceSync
from billing.ledger.store import grant_credit
from billing.payments.client import Stripe, StripeSettings
from billing.payments.stripe_sync import push
from billing.reconcile import waterfall as w
from billing.reconcile.cli import main as reconcile_main
from billing.reconcile.service import reconcile
from deploy.local.stripe_peers import pay_invoice_in_localstripe
from schemas.usage import KIND_ADJUSTMENT
from tests.support.billing_fixtures import HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, minutes, usage_row

MON_NOV_2 = NOV_1 + 24 * HOUR
TUE_NOV_3 = NOV_1 + 2 * 24 * HOUR
WED_NOV_4 = NOV_1 + 3 * 24 * HOUR
NOW = NOV_1 + 40 * 24 * HOUR  # 10 December: every November lease has ended
KWH_MJ = 36_000_000  # 0.01 kWh


def _lease(ledger: Ledger, lease_id: str, gpu: str, start: int, end: int, tenant: str = "acme") -> None:
    with ledger.transaction() as session:
        open_lease(session, tenant, gpu, start, end, "on_demand", lease_id, "test")


def _one(result: w.Reconciliation, tenant: str, cause: str, leg: str | None = None) -> w.Item:
    found = result.tenant(tenant).causes(cause, leg)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def usage(tmp_path: Path) -> UsageWriter:
    return UsageWriter(tmp_path / "usage")


def build_scenario(url: str, usage: UsageWriter) -> Ledger:
    ledger = ledger_with(url, tenants={"acme": {"tax_jurisdiction": "XX"}})
    with ledger.transaction() as session:
        grant_credit(session, "test", "acme", "promo", Decimal("5.00"), None, granted_ms=NOV_1)
    _lease(ledger, "lease-a", "GPU-1", MON_NOV_2 + 8 * HOUR, MON_NOV_2 + 11 * HOUR)
    _lease(ledger, "lease-b", "GPU-2", MON_NOV_2 + 12 * HOUR, MON_NOV_2 + 12 * HOUR + 20_000)
    _lease(ledger, "lease-c", "GPU-3", TUE_NOV_3 + 8 * HOUR, TUE_NOV_3 + 8 * HOUR + 40 * MINUTE)
    _lease(ledger, "lease-d", "GPU-4", WED_NOV_4 + 8 * HOUR, WED_NOV_4 + 8 * HOUR + 20 * MINUTE)
    a = dict(gpu="GPU-1", lease="lease-a", energy_mj=KWH_MJ)
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 60, **a) + minutes("acme", MON_NOV_2 + 10 * HOUR, 60, **a))
    usage.write([usage_row("acme", MON_NOV_2 + 12 * HOUR, gpu="GPU-2", lease="lease-b", allocated_ms=20_000)])
    usage.write(minutes("acme", WED_NOV_4 + 8 * HOUR, 30, gpu="GPU-4", lease="lease-d"))
    november = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    assert finalize(ledger, "test", november.invoice_id).number == "WM-000001"
    # late usage of November: lease C's first 30 minutes -> a correction on December's invoice
    usage.write(minutes("acme", TUE_NOV_3 + 8 * HOUR, 30, gpu="GPU-3", lease="lease-c"))
    december = run_period(ledger, usage.root, "2026-12", "test").outcomes[0]
    assert december.corrections == 1 and december.total == Decimal("1.65")
    assert finalize(ledger, "test", december.invoice_id).number == "WM-000002"
    # the meter fix of lease D (-10 minutes) -> a credit note against November in January's run
    usage.write(
        [
            usage_row(
                "acme",
                WED_NOV_4 + 8 * HOUR + 20 * MINUTE,
                gpu="GPU-4",
                lease="lease-d",
                allocated_ms=-10 * MINUTE,
                kind=KIND_ADJUSTMENT,
                suffix="/fix",
            )
        ]
    )
    january = run_period(ledger, usage.root, "2027-01", "test").outcomes[0]
    assert (january.credit_notes, january.status, january.invoice_id) == (["WM-CN-000001"], "no invoice", None)
    # lease C's last 10 minutes: known now, counted by no document yet
    usage.write(minutes("acme", TUE_NOV_3 + 8 * HOUR + 30 * MINUTE, 10, gpu="GPU-3", lease="lease-c"))
    return ledger


def test_every_cause_with_its_exact_amount(billing_db_url: str, usage: UsageWriter, tmp_path: Path):
    ledger = build_scenario(billing_db_url, usage)
    result = reconcile(ledger, usage.root, "2026-11", now_ms=NOW)
    assert result.unexplained == [] and result.ok, result.unexplained
    acme = result.tenant("acme")
    assert (acme.invoice, acme.status) == ("WM-000001", "finalized")

    # quantity: leased 3 h + 20 s + 40 min + 20 min; lease A's hour without samples; metered = leased - 1 h
    assert _one(result, "acme", w.LEASED).quantity_ms == 3 * HOUR + 20_000 + 60 * MINUTE
    gap = _one(result, "acme", w.UNMETERED)
    assert (
        gap.quantity_ms == -HOUR
        and "lease lease-a" in gap.detail
        and "1.000000 GPU-h leased but unmetered" in gap.detail
    )
    assert _one(result, "acme", w.METERED_TIME).quantity_ms == 2 * HOUR + 20_000 + 60 * MINUTE

    # money: 10,820,000 ms at 3.00 per GPU-hour + 0.18 energy, unrounded
    metered = _one(result, "acme", w.METERED)
    assert metered.amount == Fraction(10_820_000 * 3, 3_600_000) + Fraction(18, 100)
    late = {item.detail: (item.amount, item.quantity_ms) for item in acme.causes(w.LATE)}
    assert late == {
        "to correction lines on WM-000002": (Fraction(-3, 2), -30 * MINUTE),
        "to credit note WM-CN-000001": (Fraction(1, 2), 10 * MINUTE),
        "not yet invoiced (no document has counted it yet)": (Fraction(-1, 2), -10 * MINUTE),
    }
    rounding_line = _one(result, "acme", w.LEASE_ROUNDING)
    assert (rounding_line.amount, rounding_line.quantity_ms) == (Fraction(40_000 * 3, 3_600_000), 40_000)
    assert _one(result, "acme", w.TAX).amount == Fraction(773, 1000)
    credit = _one(result, "acme", w.CREDITS)
    assert credit.amount == Fraction(-5) and "promo 5.00" in credit.detail
    # per line: +1/300 (GPU time), -1/300 (lease rounding), 0 (energy), -0.003 (tax)
    assert _one(result, "acme", w.ROUNDING).amount == Fraction(-3, 1000)
    assert _one(result, "acme", w.INVOICED, w.LEG_MONEY).amount == Fraction(7, 2)
    assert not acme.causes(w.DISCOUNT) and not acme.causes(w.TRUE_UP) and not acme.causes(w.CORRECTIONS_IN)
    steps = [i.amount for i in acme.items if i.leg == w.LEG_MONEY and i.role == w.ROLE_STEP and i.amount is not None]
    assert metered.amount + sum(steps, Fraction(0)) == Fraction(7, 2)
    # collected: never pushed -> flagged, not unexplained
    assert any("WM-000001: not pushed to Stripe" in flag for flag in result.flags)
    assert any("Stripe not consulted" in flag for flag in result.flags)
    totals = result.totals["USD"]
    assert (totals.metered, totals.invoiced, totals.collected) == (metered.amount, Decimal("3.50"), Decimal(0))

    # December carries November's correction in; its own usage is nil
    december = reconcile(ledger, usage.root, "2026-12", now_ms=NOW)
    assert december.ok, december.unexplained
    carried = _one(december, "acme", w.CORRECTIONS_IN)
    assert carried.amount == Fraction(3, 2) and "late usage of 2026-11" in carried.detail
    assert _one(december, "acme", w.TAX).amount == Fraction(15, 100)
    assert _one(december, "acme", w.INVOICED, w.LEG_MONEY).amount == Fraction(165, 100)
    # January: the credit note was all there was (no usage, commitment or correction): no invoice, nothing to reconcile
    january = reconcile(ledger, usage.root, "2027-01", now_ms=NOW)
    assert january.ok and not january.tenants
    ledger.dispose()

    if billing_db_url.startswith("sqlite"):  # the command itself, once, as a subprocess
        out_csv, out_html = tmp_path / "reconcile.csv", tmp_path / "reconcile.html"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "billing.reconcile.cli",
                "reconcile",
                "--period",
                "2026-11",
                "--db",
                billing_db_url,
                "--usage-dir",
                str(usage.root),
                "--csv",
                str(out_csv),
                "--html",
                str(out_html),
                "--no-stripe",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr + run.stdout
        assert "every difference has a named cause" in run.stdout and "leased but unmetered time" in run.stdout
        rows = list(csv.DictReader(out_csv.open()))
        causes = {(row["leg"], row["cause"]) for row in rows}
        for cause in (w.UNMETERED, w.LATE, w.LEASE_ROUNDING, w.TAX, w.CREDITS, w.ROUNDING):
            assert any(c == cause for _, c in causes), cause
        assert all(row["explained"] == "true" for row in rows)
        assert {row["amount"] for row in rows if row["cause"] == w.ROUNDING} == {"-0.003"}
        page = out_html.read_text()
        assert page.startswith("<!DOCTYPE html>") and "<script" not in page
        for cause in (w.UNMETERED, w.LATE, "to credit note WM-CN-000001", w.ROUNDING, w.CREDITS):
            assert cause in page


def _drop_line_guard(ledger: Ledger) -> None:
    with ledger.transaction() as session:
        if ledger.engine.dialect.name == "sqlite":
            session.execute(text("DROP TRIGGER invoice_lines_immutable_update"))
        else:
            session.execute(text("ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_immutable"))


def test_a_tampered_invoice_line_is_unexplained_by_tenant_invoice_and_line(
    billing_db_url: str, usage: UsageWriter, capsys
):
    ledger = ledger_with(billing_db_url, tenants={"acme": {"tax_jurisdiction": "XX"}, "globex": {}})
    _lease(ledger, "lease-a", "GPU-1", MON_NOV_2 + 8 * HOUR, MON_NOV_2 + 9 * HOUR)
    _lease(ledger, "lease-g", "GPU-9", MON_NOV_2 + 8 * HOUR, MON_NOV_2 + 9 * HOUR, tenant="globex")
    usage.write(
        minutes("acme", MON_NOV_2 + 8 * HOUR, 60, gpu="GPU-1", lease="lease-a")
        + minutes("globex", MON_NOV_2 + 8 * HOUR, 60, gpu="GPU-9", lease="lease-g")
    )
    for outcome in run_period(ledger, usage.root, "2026-11", "test").outcomes:
        finalize(ledger, "test", outcome.invoice_id)
    assert reconcile(ledger, usage.root, "2026-11", now_ms=NOW).ok
    _drop_line_guard(ledger)
    with ledger.transaction() as session:
        session.execute(
            text(
                "UPDATE invoice_lines SET amount = '3.06' WHERE position = 0 AND invoice_id = "
                "(SELECT id FROM invoices WHERE number = 'WM-000001')"
            )
        )
    result = reconcile(ledger, usage.root, "2026-11", now_ms=NOW)
    assert result.unexplained == [
        "tenant acme, invoice WM-000001, line 0 (gpu_time): stored 3.06, Parquet and rate card give 3.00"
    ]
    assert result.tenant("globex").unexplained == []
    ledger.dispose()
    capsys.readouterr()
    code = reconcile_main(
        ["reconcile", "--period", "2026-11", "--db", billing_db_url, "--usage-dir", str(usage.root), "--no-stripe"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "unexplained: tenant acme, invoice WM-000001, line 0 (gpu_time): stored 3.06" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, usage: UsageWriter, capsys):
    db = f"sqlite:///{tmp_path}/cli.db"
    usage.write(minutes("acme", MON_NOV_2, 1))
    for argv, message in (
        (["--period", "2026-13", "--usage-dir", str(usage.root)], "does not parse"),
        (["--period", "2026-11", "--usage-dir", str(tmp_path / "nowhere")], "no usage data"),
        (["--period", "2026-11", "--usage-dir", str(usage.root), "--tenant", "nobody"], "unknown tenant 'nobody'"),
    ):
        assert reconcile_main(["reconcile", "--db", db, "--no-stripe", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    assert (
        reconcile_main(["reconcile", "--db", unreachable, "--period", "2026-11", "--usage-dir", str(usage.root)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("wattmeter-billing reconcile: ") and len(err.splitlines()) == 1, err


def test_stripe_leg_against_localstripe(tmp_path: Path, usage: UsageWriter, localstripe_clean, monkeypatch, capsys):
    """acme is pushed as is, then paid in Stripe; globex's customer had a foreign pending item before
    its invoice was created, so Stripe's invoice holds a line wattmeter never sent."""
    url = f"sqlite:///{tmp_path}/billing.db"
    ledger = ledger_with(url, tenants={"acme": {"tax_jurisdiction": "XX"}, "globex": {}})
    _lease(ledger, "lease-a", "GPU-1", MON_NOV_2 + 8 * HOUR, MON_NOV_2 + 9 * HOUR)
    _lease(ledger, "lease-g", "GPU-9", MON_NOV_2 + 8 * HOUR, MON_NOV_2 + 9 * HOUR, tenant="globex")
    usage.write(
        minutes("acme", MON_NOV_2 + 8 * HOUR, 60, gpu="GPU-1", lease="lease-a")
        + minutes("globex", MON_NOV_2 + 8 * HOUR, 30, gpu="GPU-9", lease="lease-g")
    )
    for outcome in run_period(ledger, usage.root, "2026-11", "test").outcomes:
        finalize(ledger, "test", outcome.invoice_id)
    peer = localstripe_clean
    stripe = Stripe(StripeSettings(api_key=peer.api_key, api_base=peer.url, retries=1, backoff_s=0.05))
    client = peer.client()
    globex = client.v1.customers.create(params={"name": "globex", "metadata": {"wattmeter_tenant_id": "globex"}})
    client.v1.invoice_items.create(
        params={"customer": globex.id, "amount": 999, "currency": "usd", "description": "setup fee"}
    )
    report = push(ledger, stripe, "test", period="2026-11")
    assert not report.failed, report.failed

    result = reconcile(ledger, usage.root, "2026-11", stripe=stripe, now_ms=NOW)
    acme = result.tenant("acme")
    assert acme.unexplained == []
    assert _one(result, "acme", w.NOT_YET_PAID).amount == Fraction(-330, 100)  # 3.00 + 0.30 tax, open
    assert _one(result, "acme", w.COLLECTED).amount == 0
    lines = result.tenant("globex").unexplained
    assert len(lines) == 2, lines
    assert lines[0].startswith("tenant globex, invoice WM-000002, Stripe line il_")
    assert lines[0].endswith("'setup fee': 9.99 is not from wattmeter (no wattmeter metadata)")
    assert lines[1].startswith("tenant globex, invoice WM-000002, total: Stripe invoice in_") and lines[1].endswith(
        "totals 11.49, amount due 1.50"
    )

    # acme pays in Stripe; the webhook mirror has not heard of it yet (flagged), collected comes from Stripe
    with ledger.transaction() as session:
        acme_stripe_id = session.scalar(
            select(StripeInvoiceSync.stripe_invoice_id)
            .join(Invoice, Invoice.id == StripeInvoiceSync.invoice_id)
            .where(Invoice.number == "WM-000001")
        )
    pay_invoice_in_localstripe(peer.url, acme_stripe_id)
    paid = reconcile(ledger, usage.root, "2026-11", stripe=stripe, tenant_ids=["acme"], now_ms=NOW)
    assert paid.ok, paid.unexplained
    assert _one(paid, "acme", w.COLLECTED).amount == Fraction(33, 10) and not paid.tenant("acme").causes(w.NOT_YET_PAID)
    assert any("Stripe says paid, wattmeter's webhook mirror says open" in flag for flag in paid.flags)
    assert paid.totals["USD"].collected == Decimal("3.30")
    ledger.dispose()

    # the command, with Stripe from the environment, exits 1 naming globex's foreign line
    monkeypatch.setenv("WATTMETER_STRIPE_API_KEY", peer.api_key)
    monkeypatch.setenv("WATTMETER_STRIPE_API_BASE", peer.url)
    capsys.readouterr()
    code = reconcile_main(["reconcile", "--period", "2026-11", "--db", url, "--usage-dir", str(usage.root), "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 1 and shown["unexplained"] == lines and not shown["explained"]
    assert not any("Stripe not consulted" in flag for flag in shown["flags"])
    requests.delete(peer.url + "/_config/data", timeout=10)


def test_metered_beyond_its_lease_is_unexplained_and_untracked_leases_are_flagged(tmp_path: Path, usage: UsageWriter):
    """initech's lease is 30 minutes, its GPU metered 45; hooli's leases are not in the ledger at all;
    neither has an invoice yet (flagged, not unexplained)."""
    ledger = ledger_with(f"sqlite:///{tmp_path}/b.db", tenants={"initech": {}, "hooli": {}})
    _lease(ledger, "lease-i", "GPU-7", MON_NOV_2 + 8 * HOUR, MON_NOV_2 + 8 * HOUR + 30 * MINUTE, tenant="initech")
    usage.write(
        minutes("initech", MON_NOV_2 + 8 * HOUR, 45, gpu="GPU-7", lease="lease-i")
        + minutes("hooli", MON_NOV_2 + 8 * HOUR, 10, gpu="GPU-8")
    )
    result = reconcile(ledger, usage.root, "2026-11", now_ms=NOW)
    assert result.unexplained == [
        "tenant initech, invoice none, lease lease-i (GPU GPU-7, on_demand): metered 0.750000 GPU-h, more than the "
        "0.500000 GPU-h leased"
    ]
    assert _one(result, "initech", w.UNEXPLAINED).quantity_ms == 15 * MINUTE
    assert result.tenant("hooli").unexplained == []
    assert (
        "tenant hooli: the ledger holds none of its leases in 2026-11 (0.166667 GPU-h metered on 1 lease(s) it "
        "does not know): quantity leg not reconciled" in result.flags
    )
    assert any(f.startswith("tenant initech: 0.750000 GPU-h metered in 2026-11 but no invoice") for f in result.flags)
    ledger.dispose()


def test_a_leased_tenant_with_nothing_metered_is_flagged_as_not_invoiced_for_that_reason(
    tmp_path: Path, usage: UsageWriter
):
    """`run` makes no invoice for a tenant with nothing to bill; the reconciliation says so, not
    that the period has not been run, and still shows the lease as leased but unmetered."""
    ledger = ledger_with(f"sqlite:///{tmp_path}/b.db", tenants={"initech": {}, "hooli": {}})
    _lease(ledger, "lease-i", "GPU-7", MON_NOV_2 + 8 * HOUR, MON_NOV_2 + 9 * HOUR, tenant="initech")
    usage.write(minutes("hooli", MON_NOV_2 + 8 * HOUR, 10, gpu="GPU-8"))
    assert [
        o.status for o in run_period(ledger, usage.root, "2026-11", "test").outcomes if o.tenant_id == "initech"
    ] == ["no invoice"]
    result = reconcile(ledger, usage.root, "2026-11", now_ms=NOW)
    assert "tenant initech: nothing metered in 2026-11, so no invoice" in result.flags
    assert not any(f.startswith("tenant initech:") and "has not been run" in f for f in result.flags)
    assert _one(result, "initech", w.UNMETERED).quantity_ms == -HOUR
    assert result.tenant("initech").unexplained == []
    ledger.dispose()
