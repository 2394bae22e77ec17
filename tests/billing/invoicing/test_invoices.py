"""Invoices on the real database (SQLite and PostgreSQL): drafts, finalize, immutability,
void, late usage as corrections or credit notes, explain, and the finance CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from billing.cli import main as billing_main
from billing.invoicing.errors import ImmutableInvoice
from billing.invoicing.service import finalize, finalize_period, get_invoice, run_period, void
from billing.leases.service import open_lease
from billing.ledger.db import Ledger
from billing.ledger.models import AuditEntry, Invoice, InvoiceLineRow, UsageConsumption
from billing.ledger.store import grant_credit
from billing.usage.reader import explain, list_files
from schemas.usage import KIND_ADJUSTMENT
from tests.support.billing_fixtures import (
    DEC_1,
    HOUR,
    MINUTE,
    NOV_1,
    SIMPLE_CARD,
    UsageWriter,
    ledger_with,
    minutes,
    usage_row,
)

MON_NOV_2 = NOV_1 + 24 * HOUR  # a Monday: valley 00:00-06:00 UTC on the simple card


def amounts(invoice: Invoice) -> list[tuple[str, str]]:
    return [(line.kind, str(line.amount)) for line in invoice.lines]


@pytest.fixture
def usage(tmp_path: Path) -> UsageWriter:
    return UsageWriter(tmp_path / "usage")


def test_hand_computed_invoice_and_second_run_is_a_no_op(billing_db_url: str, usage: UsageWriter):
    """acme: 60 valley minutes (05:00-06:00) and 60 peak minutes (06:00-07:00) of one H100,
    each minute 36,000,000 mJ (0.01 kWh).
    GPU time: 1 h x 1.20 + 1 h x 3.00 = 4.20; energy 0.6 kWh x 1.5 PUE = 0.9 kWh x 0.10 = 0.09
    in each period; subtotal 4.38; tax 10 % = 0.438 -> 0.44; total 4.82."""
    usage.write(minutes("acme", MON_NOV_2 + 5 * HOUR, 120, energy_mj=36_000_000))
    ledger = ledger_with(billing_db_url, tenants={"acme": {"tax_jurisdiction": "XX"}})
    report = run_period(ledger, usage.root, "2026-11", "test")
    assert [o.status for o in report.outcomes] == ["created"]
    with ledger.transaction() as session:
        invoice = get_invoice(session, report.outcomes[0].invoice_id)
        assert amounts(invoice) == [
            ("gpu_time", "3.00"),
            ("gpu_time", "1.20"),
            ("energy", "0.09"),
            ("energy", "0.09"),
            ("tax", "0.44"),
        ]
        assert (invoice.subtotal, invoice.tax, invoice.total) == (Decimal("4.38"), Decimal("0.44"), Decimal("4.82"))
        audits = session.scalar(select(func.count()).select_from(AuditEntry))
    again = run_period(ledger, usage.root, "2026-11", "test")
    assert again.nothing_to_do and [o.status for o in again.outcomes] == ["unchanged"]
    with ledger.transaction() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == audits  # nothing written


def test_an_internal_tenant_is_metered_and_never_invoiced(billing_db_url: str, usage: UsageWriter):
    """The owner's own training is a tenant marked internal: its usage is in the lake like anyone's,
    and the month's run gives it no invoice (so nothing of it reaches Stripe)."""
    usage.write(minutes("owner", MON_NOV_2 + 5 * HOUR, 120, gpu="GPU-9", energy_mj=36_000_000))
    usage.write(minutes("acme", MON_NOV_2 + 5 * HOUR, 60, energy_mj=36_000_000))
    ledger = ledger_with(billing_db_url, tenants={"acme": {}, "owner": {"internal": True}})
    report = run_period(ledger, usage.root, "2026-11", "test")
    assert sorted((o.tenant_id, o.status) for o in report.outcomes) == [("acme", "created"), ("owner", "internal")]
    with ledger.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Invoice).where(Invoice.tenant_id == "owner")) == 0
    again = run_period(ledger, usage.root, "2026-11", "test")
    assert again.nothing_to_do


SLA_CARD = SIMPLE_CARD.replace(
    "[tax]",
    """[sla.on_demand]
availability = "99.9"
credits = [{ below = "99.9", percent = "10" }, { below = "99.0", percent = "25" }]
[tax]""",
)


def test_sla_credit_from_unmetered_and_nvml_error_time_over_v1_and_v2_files(billing_db_url: str, tmp_path: Path):
    """acme leases GPU-1 on demand for 10 peak hours (Monday 08:00-18:00, 3.00/h = 30.00). The lake
    holds a version 1 file (no unhealthy_ms column) and version 2 files: 5 minutes are missing
    (unmetered) and 2 minutes were metered while NVML reported errors: 7 of 600 minutes unhealthy,
    availability 98.833 %, under 99.0: 25 % of the GPU time charge. By hand: 595 min x 3.00/h =
    29.75; credit 7.44 (7.4375, half even); subtotal 22.31."""
    from schemas.parquet import usage_arrow_schema

    start = MON_NOV_2 + 8 * HOUR
    usage = UsageWriter(tmp_path / "usage")
    old = usage_arrow_schema()
    usage.sink.schema = old.remove(old.get_field_index("unhealthy_ms"))  # as a version 1 sink wrote
    usage.write([{**row, "schema_version": 1} for row in minutes("acme", start, 300)])
    usage.sink.schema = old
    usage.write(minutes("acme", start + 305 * MINUTE, 100))
    sick = minutes("acme", start + 405 * MINUTE, 2)
    usage.write([{**row, "unhealthy_ms": MINUTE} for row in sick])
    usage.write(minutes("acme", start + 407 * MINUTE, 193))
    ledger = ledger_with(billing_db_url, SLA_CARD)
    with ledger.transaction() as session:
        open_lease(session, "acme", "GPU-1", start, start + 10 * HOUR, lease_id="lease-acme-GPU-1")
    report = run_period(ledger, usage.root, "2026-11", "test")
    with ledger.transaction() as session:
        invoice = get_invoice(session, report.outcomes[0].invoice_id)
        assert amounts(invoice) == [("gpu_time", "29.75"), ("sla_credit", "-7.44"), ("tax", "0.00")]
        assert "availability 98.833% against 99.9% promised" in invoice.lines[1].description
        assert invoice.subtotal == Decimal("22.31")
    assert run_period(ledger, usage.root, "2026-11", "test").nothing_to_do  # the credit is stable


def test_new_usage_regenerates_the_draft_deterministically(billing_db_url: str, usage: UsageWriter):
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 30))
    ledger = ledger_with(billing_db_url)
    first = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    usage.write(minutes("acme", MON_NOV_2 + 9 * HOUR, 30))
    second = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    assert (first.status, second.status) == ("created", "updated")
    assert second.invoice_id == first.invoice_id
    assert (first.total, second.total) == (Decimal("1.50"), Decimal("3.00"))  # 0.5 h, then 1 h at 3.00 peak


def test_finalize_numbers_gap_free_and_issued_invoices_never_change(billing_db_url: str, usage: UsageWriter):
    for tenant in ("acme", "globex", "initech"):
        usage.write(minutes(tenant, MON_NOV_2 + 8 * HOUR, 10, gpu=f"GPU-{tenant}"))
    ledger = ledger_with(billing_db_url, tenants={"acme": {}, "globex": {}, "initech": {}})
    report = run_period(ledger, usage.root, "2026-11", "test")
    numbers = [finalize(ledger, "test", o.invoice_id).number for o in report.outcomes]
    assert numbers == ["WM-000001", "WM-000002", "WM-000003"]
    with pytest.raises(ImmutableInvoice, match="cannot be finalized"):
        finalize(ledger, "test", "WM-000001")
    # the database itself refuses a change, whatever path it comes by
    with pytest.raises(DBAPIError, match="never change"), ledger.transaction() as session:
        session.execute(text("UPDATE invoices SET total = '0' WHERE number = 'WM-000002'"))
    with pytest.raises(DBAPIError, match="never change"), ledger.transaction() as session:
        session.execute(text("DELETE FROM invoice_lines WHERE invoice_id = :i"), {"i": report.outcomes[1].invoice_id})
    with pytest.raises(DBAPIError, match="append-only"), ledger.transaction() as session:
        session.execute(text("DELETE FROM audit_log"))
    with ledger.transaction() as session:
        invoice = get_invoice(session, "WM-000002")
        assert invoice.total == Decimal("0.50") and len(invoice.content_hash) == 64
    # running the period again with new usage leaves issued invoices alone
    usage.write(minutes("acme", MON_NOV_2 + 12 * HOUR, 10, gpu="GPU-acme"))
    assert {o.status for o in run_period(ledger, usage.root, "2026-11", "test").outcomes} == {"issued"}


def test_void_with_reason_then_a_replacement_counts_the_same_usage(billing_db_url: str, usage: UsageWriter):
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 20))
    ledger = ledger_with(billing_db_url)
    invoice_id = run_period(ledger, usage.root, "2026-11", "test").outcomes[0].invoice_id
    number = finalize(ledger, "test", invoice_id).number
    with pytest.raises(Exception, match="needs a reason"):
        void(ledger, "test", number, " ")
    voided = void(ledger, "test", number, "wrong tax jurisdiction")
    assert (voided.status, voided.void_reason) == ("void", "wrong tax jurisdiction")
    replacement = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    assert replacement.status == "created" and replacement.invoice_id != invoice_id
    assert replacement.total == Decimal("1.00")  # 20 min at 3.00 peak
    assert finalize(ledger, "test", replacement.invoice_id).number == "WM-000002"


def test_late_usage_after_finalize_is_a_correction_with_its_service_period(billing_db_url: str, usage: UsageWriter):
    """November is issued with 30 peak minutes (1.50). Then 30 more minutes of November arrive
    as an adjustment: December's invoice carries a +1.50 correction for November, and tax on it."""
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 30))
    ledger = ledger_with(billing_db_url, tenants={"acme": {"tax_jurisdiction": "XX"}})
    november = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    finalize(ledger, "test", november.invoice_id)
    usage.write(minutes("acme", MON_NOV_2 + 9 * HOUR, 30, kind=KIND_ADJUSTMENT))
    assert run_period(ledger, usage.root, "2026-11", "test").outcomes[0].status == "issued"
    december = run_period(ledger, usage.root, "2026-12", "test").outcomes[0]
    assert december.corrections == 1
    with ledger.transaction() as session:
        invoice = get_invoice(session, december.invoice_id)
        corrections = [line for line in invoice.lines if line.correction]
        assert [(c.service_period, c.quantity_base, str(c.amount)) for c in corrections] == [
            ("2026-11", 30 * MINUTE, "1.50")
        ]
        assert corrections[0].description.startswith("Correction for")
        assert (invoice.subtotal, invoice.tax, invoice.total) == (Decimal("1.50"), Decimal("0.15"), Decimal("1.65"))
    # running December again counts nothing twice
    assert run_period(ledger, usage.root, "2026-12", "test").outcomes[0].status == "unchanged"
    finalize(ledger, "test", december.invoice_id)
    assert run_period(ledger, usage.root, "2026-12", "test").outcomes[0].status == "issued"
    january = run_period(ledger, usage.root, "2027-01", "test").outcomes[0]
    assert (january.status, january.invoice_id, january.corrections) == ("no invoice", None, 0)


def test_late_usage_that_lowers_the_amount_becomes_a_credit_note(billing_db_url: str, usage: UsageWriter):
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 30))
    ledger = ledger_with(billing_db_url)
    finalize(ledger, "test", run_period(ledger, usage.root, "2026-11", "test").outcomes[0].invoice_id)
    # a late adjustment that takes back 10 minutes (a negative record, as a correction of the meter)
    usage.write(
        [usage_row("acme", MON_NOV_2 + 8 * HOUR, allocated_ms=-10 * MINUTE, kind=KIND_ADJUSTMENT, suffix="/fix")]
    )
    december = run_period(ledger, usage.root, "2026-12", "test").outcomes[0]
    assert december.corrections == 0 and december.credit_notes == ["WM-CN-000001"]
    assert billing_main(["credit-notes", "list", "--db", billing_db_url, "--json"]) == 0
    assert run_period(ledger, usage.root, "2026-12", "test").outcomes[0].credit_notes == []  # never twice


def test_every_usage_record_counts_on_exactly_one_invoice(billing_db_url: str, usage: UsageWriter):
    ledger = ledger_with(billing_db_url)
    total_ms = 0
    for month, (period, start) in enumerate((("2026-11", MON_NOV_2), ("2026-12", DEC_1 + 7 * 24 * HOUR))):
        rows = minutes("acme", start + 8 * HOUR, 40)
        usage.write(rows)
        total_ms += 40 * MINUTE
        invoice_id = run_period(ledger, usage.root, period, "test").outcomes[0].invoice_id
        # late records for the month just invoiced, one batch before and one after finalize
        usage.write(minutes("acme", start + 10 * HOUR, 5, kind=KIND_ADJUSTMENT, suffix=f"/a{month}"))
        usage.write(minutes("acme", start + 11 * HOUR, 5, kind=KIND_ADJUSTMENT, suffix=f"/b{month}"))
        total_ms += 10 * MINUTE
        if month == 0:
            run_period(ledger, usage.root, period, "test")  # picks up the first late batch
        finalize(ledger, "test", invoice_id)
    run_period(ledger, usage.root, "2027-01", "test")
    with ledger.transaction() as session:
        billed_ms = session.scalar(
            select(func.sum(InvoiceLineRow.quantity_base)).where(InvoiceLineRow.kind == "gpu_time")
        )
        assert billed_ms == total_ms
        consumed = session.scalars(select(UsageConsumption)).all()
        assert len(consumed) >= 4


def test_explain_reruns_the_recorded_query(billing_db_url: str, usage: UsageWriter, capsys):
    usage.write(minutes("acme", MON_NOV_2 + 5 * HOUR, 90, energy_mj=1_000, gpu="GPU-a"))
    usage.write(minutes("acme", MON_NOV_2 + 5 * HOUR, 30, energy_mj=2_000, gpu="GPU-b"))
    ledger = ledger_with(billing_db_url)
    invoice_id = run_period(ledger, usage.root, "2026-11", "test").outcomes[0].invoice_id
    with ledger.transaction() as session:
        lines = get_invoice(session, invoice_id).lines
    for line in lines:
        if line.kind in ("gpu_time", "energy"):
            assert explain(usage.root, line.usage_query).quantity == line.quantity_base
    peak = next(line for line in lines if line.kind == "gpu_time" and line.tou_period == "peak")
    assert peak.quantity_base == 30 * MINUTE  # 06:00-06:30 on GPU-a
    capsys.readouterr()
    code = billing_main(
        [
            "explain",
            str(invoice_id),
            str(peak.position),
            "--db",
            billing_db_url,
            "--usage-dir",
            str(usage.root),
            "--json",
        ]
    )
    shown = json.loads(capsys.readouterr().out)
    assert (
        code == 0
        and shown["matches"]
        and shown["per_gpu"]
        == [{"gpu_uuid": "GPU-a", "lease_id": "lease-acme-GPU-a", "records": 30, "quantity": 30 * MINUTE}]
    )
    assert len(list_files(usage.root)) == 2


def explain_json(db_url: str, usage: UsageWriter, invoice_id: int, position: int, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    argv = ["explain", str(invoice_id), str(position), "--db", db_url, "--usage-dir", str(usage.root), "--json"]
    code = billing_main(argv)
    return code, json.loads(capsys.readouterr().out)


GRADUATED_CARD = SIMPLE_CARD.replace(
    'peak = "3.00"\nvalley = "1.20"',
    '"*" = { mode = "graduated", tiers = [{ up_to = "1", price = "3.00" }, { price = "1.00" }] }',
)


def test_explain_compares_rounding_and_tier_lines_with_the_quantity_they_price(
    billing_db_url: str, usage: UsageWriter, capsys
):
    """Tiers: 1 h at 3.00 then 1.00. GPU-a: 80 whole minutes (tier 1: 60, tier 2: 20); GPU-b: one 20 s
    minute, rounded to the 60 s minimum (+40 s). Every usage line's re-derived quantity is its own;
    with GPU-b's file gone the rounding line is DIFFERENT, exit 1."""
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 80, gpu="GPU-a"))
    usage.write([usage_row("acme", MON_NOV_2 + 10 * HOUR, gpu="GPU-b", allocated_ms=20_000)])
    ledger = ledger_with(billing_db_url, GRADUATED_CARD)
    invoice_id = run_period(ledger, usage.root, "2026-11", "test").outcomes[0].invoice_id
    with ledger.transaction() as session:
        lines = [line for line in get_invoice(session, invoice_id).lines if line.base_unit]
    assert [(line.kind, line.tier, line.quantity_base) for line in lines] == [
        ("gpu_time", 1, HOUR),
        ("gpu_time", 2, 20 * MINUTE + 20_000),
        ("gpu_time_rounding", 2, 40_000),
    ]
    for line in lines:
        code, shown = explain_json(billing_db_url, usage, invoice_id, line.position, capsys)
        assert (code, shown["matches"], shown["line_quantity"]) == (0, True, line.quantity_base), shown
    _, rounding = explain_json(billing_db_url, usage, invoice_id, lines[2].position, capsys)
    assert rounding["rule"] == "lease_rounding" and rounding["per_gpu"] == [
        {"gpu_uuid": "GPU-b", "lease_id": "lease-acme-GPU-b", "records": 1, "quantity": 20_000}
    ]
    argv = ["explain", str(invoice_id), str(lines[2].position), "--db", billing_db_url, "--usage-dir", str(usage.root)]
    assert billing_main(argv) == 0
    assert "rounding uplift: 40000 ms (same)" in capsys.readouterr().out
    # the file holding GPU-b's minute goes missing: the rounding line's usage changed under it
    gpu_b = [f for f in list_files(usage.root) if f.first == 80]
    assert len(gpu_b) == 1
    Path(gpu_b[0].path).unlink()
    code, shown = explain_json(billing_db_url, usage, invoice_id, lines[2].position, capsys)
    assert (code, shown["matches"], shown["line_quantity"]) == (1, False, 0)


def test_explain_re_derives_a_correction_of_a_rounding_line(billing_db_url: str, usage: UsageWriter, capsys):
    """November is issued with a 20 s lease (+40 s to the 60 s minimum); 30 s more of that lease arrive
    late. December corrects November: GPU time +30 s, rounding -30 s (the uplift is now 10 s). Explain
    re-derives both from the Parquet."""
    usage.write([usage_row("acme", MON_NOV_2 + 8 * HOUR, allocated_ms=20_000)])
    ledger = ledger_with(billing_db_url)
    finalize(ledger, "test", run_period(ledger, usage.root, "2026-11", "test").outcomes[0].invoice_id)
    usage.write([usage_row("acme", MON_NOV_2 + 9 * HOUR, allocated_ms=30_000, kind=KIND_ADJUSTMENT)])
    december = run_period(ledger, usage.root, "2026-12", "test").outcomes[0]
    with ledger.transaction() as session:
        corrections = [line for line in get_invoice(session, december.invoice_id).lines if line.correction]
    assert [(c.kind, c.quantity_base) for c in corrections] == [("gpu_time", 30_000), ("gpu_time_rounding", -30_000)]
    for line in corrections:
        code, shown = explain_json(billing_db_url, usage, december.invoice_id, line.position, capsys)
        assert (code, shown["matches"], shown["line_quantity"]) == (0, True, line.quantity_base), shown


def test_no_invoice_for_a_tenant_with_nothing_to_bill_and_one_when_late_usage_corrects(
    billing_db_url: str, usage: UsageWriter, capsys
):
    """idle has a contract but no usage in November: no invoice (run says why), run again: nothing to do.
    After November is issued, 30 peak minutes of idle's November arrive late: December (no usage of its
    own) has an invoice for idle, and its line says it corrects November."""
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 30))
    ledger = ledger_with(billing_db_url, tenants={"acme": {}, "idle": {}})
    report = run_period(ledger, usage.root, "2026-11", "test")
    assert [(o.tenant_id, o.status) for o in report.outcomes] == [("acme", "created"), ("idle", "no invoice")]
    assert report.outcomes[1].note == "no usage, no commitment, no correction" and not report.nothing_to_do
    with ledger.transaction() as session:
        assert session.scalars(select(Invoice.tenant_id)).all() == ["acme"]
    capsys.readouterr()
    assert billing_main(["run", "--period", "2026-11", "--db", billing_db_url, "--usage-dir", str(usage.root)]) == 0
    out = capsys.readouterr().out
    assert "idle: no usage, no commitment, no correction: no invoice" in out and "nothing to do" in out
    assert [i.tenant_id for i in finalize_period(ledger, "test", "2026-11")] == ["acme"]
    usage.write(minutes("idle", MON_NOV_2 + 8 * HOUR, 30, kind=KIND_ADJUSTMENT))
    december = {o.tenant_id: o for o in run_period(ledger, usage.root, "2026-12", "test").outcomes}
    assert (december["acme"].status, december["idle"].status) == ("no invoice", "created")
    with ledger.transaction() as session:
        lines = get_invoice(session, december["idle"].invoice_id).lines
        assert [(line.kind, line.service_period, str(line.amount)) for line in lines] == [
            ("gpu_time", "2026-11", "1.50"),
            ("tax", "2026-12", "0.00"),
        ]
        assert lines[0].correction and lines[0].description.startswith("Correction for 2026-11-01..2026-12-01: ")
    assert run_period(ledger, usage.root, "2026-12", "test").nothing_to_do


def test_a_commitment_is_invoiced_without_usage(billing_db_url: str, usage: UsageWriter):
    committed = SIMPLE_CARD.replace('pue = "1.5"', 'pue = "1.5"\ncommitment = "10.00"')
    ledger = ledger_with(billing_db_url, committed)
    outcome = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    assert (outcome.status, outcome.total) == ("created", Decimal("10.00"))
    with ledger.transaction() as session:
        line = get_invoice(session, outcome.invoice_id).lines[0]
        assert line.kind == "commitment_true_up" and "Commitment true-up: committed 10.00" in line.description


def test_a_draft_left_with_nothing_to_bill_is_withdrawn(billing_db_url: str, usage: UsageWriter):
    """10 minutes make a draft; an adjustment taking them back leaves nothing: the draft goes, audited."""
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 10))
    ledger = ledger_with(billing_db_url)
    assert run_period(ledger, usage.root, "2026-11", "test").outcomes[0].status == "created"
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 10, kind=KIND_ADJUSTMENT, allocated_ms=-MINUTE))
    outcome = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    assert (outcome.status, outcome.note) == ("withdrawn", "no usage, no commitment, no correction")
    with ledger.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == 0
        assert session.scalar(select(func.count()).select_from(UsageConsumption)) == 0
        assert session.scalars(select(AuditEntry.action).where(AuditEntry.action == "invoice.withdraw")).all()
    again = run_period(ledger, usage.root, "2026-11", "test")
    assert again.nothing_to_do and again.outcomes[0].status == "no invoice"


def test_credits_are_drawn_and_a_void_releases_them(billing_db_url: str, usage: UsageWriter):
    usage.write(minutes("acme", MON_NOV_2 + 8 * HOUR, 60))  # 3.00
    ledger = ledger_with(billing_db_url)
    with ledger.transaction() as session:
        grant_credit(session, "test", "acme", "promo", Decimal("2.00"), None, granted_ms=NOV_1)
    outcome = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    assert (outcome.total, outcome.amount_due) == (Decimal("3.00"), Decimal("1.00"))
    number = finalize(ledger, "test", outcome.invoice_id).number
    void(ledger, "test", number, "re-issue")
    again = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    assert again.amount_due == Decimal("1.00")  # the voided invoice's drawdown was released


def test_duplicate_record_copies_count_once(billing_db_url: str, usage: UsageWriter):
    rows = minutes("acme", MON_NOV_2 + 8 * HOUR, 20)
    usage.write(rows)
    usage.write(rows[5:10])  # a second sink generation wrote five of them again
    ledger = ledger_with(billing_db_url)
    assert run_period(ledger, usage.root, "2026-11", "test").outcomes[0].total == Decimal("1.00")


def test_two_runs_at_once_make_one_invoice_per_tenant(billing_db_url: str, usage: UsageWriter, tmp_path: Path):
    tenants = {f"t{i}": {} for i in range(6)}
    for tenant in tenants:
        usage.write(minutes(tenant, MON_NOV_2 + 8 * HOUR, 15, gpu=f"GPU-{tenant}"))
    ledger_with(billing_db_url, tenants=tenants).dispose()
    command = [
        sys.executable,
        "-m",
        "billing.cli",
        "run",
        "--period",
        "2026-11",
        "--db",
        billing_db_url,
        "--usage-dir",
        str(usage.root),
        "--json",
    ]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    ledger = Ledger(billing_db_url)
    with ledger.transaction() as session:
        per_tenant = session.execute(select(Invoice.tenant_id, func.count()).group_by(Invoice.tenant_id)).all()
    assert sorted(per_tenant) == [(t, 1) for t in sorted(tenants)]
    statuses = [t["status"] for out, _ in outputs for t in json.loads(out)["tenants"]]
    assert statuses.count("created") == 6 and set(statuses) <= {"created", "updated", "unchanged"}
    assert run_period(ledger, usage.root, "2026-11", "test").nothing_to_do


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--period", "2026-13"], "does not parse"),
        (["run", "--period", "november"], "does not parse"),
        (["run", "--period", "2026-11", "--tenant", "nobody"], "unknown tenant 'nobody'"),
        (["invoices", "show", "WM-999999"], "no invoice 'WM-999999'"),
        (["contracts", "add", "--tenant", "nobody", "--rate-card", "x", "--from", "2026-11-01"], "unknown tenant"),
        (["tenants", "add", "x", "--currency", "XYZ"], "XYZ"),
        (["tenants", "add", "x", "--timezone", "Mars/Olympus"], "IANA"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path):
    db = f"sqlite:///{tmp_path}/cli.db"
    done = subprocess.run(
        [sys.executable, "-m", "billing.cli", *argv, "--db", db, "--usage-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_rate_card_with_a_float_price_is_refused(tmp_path: Path):
    card = tmp_path / "float.toml"
    card.write_text(
        Path(__file__)
        .resolve()
        .parents[2]
        .joinpath("support", "billing_fixtures.py")
        .read_text()
        .split('SIMPLE_CARD = """')[1]
        .split('"""')[0]
        .replace('peak = "3.00"', "peak = 3.0")
    )
    done = subprocess.run(
        [sys.executable, "-m", "billing.cli", "ratecards", "load", str(card), "--db", f"sqlite:///{tmp_path}/cli.db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "float" in done.stderr and "Traceback" not in done.stderr


def test_a_rate_card_change_mid_period_splits_the_lines_at_the_instant(billing_db_url: str, usage: UsageWriter):
    """Version 2 of the card takes effect 2026-11-15 00:00 UTC at 4.00 peak. 30 peak minutes on
    the 10th (old price, 3.00) and 30 on the 16th (new): 1.50 + 2.00."""
    usage.write(minutes("acme", NOV_1 + 9 * 24 * HOUR + 8 * HOUR, 30))
    usage.write(minutes("acme", NOV_1 + 15 * 24 * HOUR + 8 * HOUR, 30))
    ledger = ledger_with(billing_db_url)
    from billing.ledger.store import store_rate_card
    from billing.pricing.ratecards import parse_rate_card
    from tests.support.billing_fixtures import SIMPLE_CARD

    v2 = (
        SIMPLE_CARD.replace("version = 1", "version = 2")
        .replace('effective_from = "2026-01-01T00:00:00Z"', 'effective_from = "2026-11-15T00:00:00Z"')
        .replace('peak = "3.00"', 'peak = "4.00"')
    )
    with ledger.transaction() as session:
        store_rate_card(session, "test", parse_rate_card(v2, "v2"))
    invoice_id = run_period(ledger, usage.root, "2026-11", "test").outcomes[0].invoice_id
    with ledger.transaction() as session:
        lines = [line for line in get_invoice(session, invoice_id).lines if line.kind == "gpu_time"]
    assert [(line.card_version, line.service_start_ms, str(line.unit_price), str(line.amount)) for line in lines] == [
        (1, NOV_1, "3.00", "1.50"),
        (2, NOV_1 + 14 * 24 * HOUR, "4.00", "2.00"),
    ]


JPY_CARD = """
name = "tokyo"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "JPY"
pue = "1"
[calendar]
timezone = "Asia/Tokyo"
weekday = { valley = [[0, 8]] }
weekend = { valley = [[0, 24]] }
holidays = { country = "JP" }
[gpu_hour."*".on_demand]
peak = "450"
valley = "275"
[tax]
"*" = "0.10"
"""


def test_a_yen_invoice_in_tokyo_time_has_no_minor_unit(billing_db_url: str, usage: UsageWriter):
    """Monday 2026-11-02 07:30-08:30 JST (22:30-23:30 UTC on the 1st): 30 valley + 30 peak
    minutes. 0.5 h x 275 = 137.5 -> 138 (half even); 0.5 h x 450 = 225; tax 10 % of 363 = 36.3 -> 36.
    The tenant's November is the Tokyo month, so the window on 1 Nov UTC belongs to it."""
    usage.write(minutes("kaisha", NOV_1 + 22 * HOUR + 30 * MINUTE, 60))
    ledger = ledger_with(billing_db_url, JPY_CARD, tenants={"kaisha": {"timezone": "Asia/Tokyo"}})
    outcome = run_period(ledger, usage.root, "2026-11", "test").outcomes[0]
    with ledger.transaction() as session:
        invoice = get_invoice(session, outcome.invoice_id)
        assert amounts(invoice) == [("gpu_time", "225"), ("gpu_time", "138"), ("tax", "36")]
        assert (invoice.currency, invoice.total, invoice.period_start_ms) == ("JPY", Decimal("399"), NOV_1 - 9 * HOUR)
