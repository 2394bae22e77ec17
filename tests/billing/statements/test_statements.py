"""Statements: the totals a tenant is shown equal the invoice's and the Parquet's, exactly, for tenants
in non-UTC time zones (New York on its 25-hour fall-back day, Berlin, Tokyo); the CLI writes the
same statement as HTML, PDF and CSV, and the CSV's numbers read back equal the ledger's."""

from __future__ import annotations

import re
import zlib
from decimal import Decimal
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from billing.invoicing.service import get_invoice
from billing.statements.statement import (
    Formatter,
    Statement,
    build_statement,
    negotiate_locale,
    parse_csv,
    render_csv,
    render_html,
)
from billing.usage.reader import OffsetRange, UsageRequest, aggregate, read_cutoff
from tests.support.billing_fixtures import HOUR
from tests.support.web_support import PERIOD, World, build_world


@pytest.fixture
def world(billing_db_url: str, tmp_path: Path) -> World:
    return build_world(billing_db_url, tmp_path / "usage")


def parquet_totals(usage_root: Path, tenant_id: str, start_ms: int, end_ms: int) -> dict[str, int]:
    """The tenant's exact GPU ms and mJ in [start_ms, end_ms) straight from the Parquet (billing.usage.reader)."""
    everything = (OffsetRange({}, read_cutoff(usage_root)),)
    request = UsageRequest("t", tenant_id, start_ms, end_ms, (start_ms,), everything)
    rows = aggregate(usage_root, [request])["t"].usage
    return {
        "allocated_gpu_ms": sum(r.allocated_gpu_ms for r in rows),
        "busy_gpu_ms": sum(r.busy_gpu_ms for r in rows),
        "energy_mj": sum(r.energy_mj for r in rows),
    }


def line_base(statement: Statement, kind: str, tou: str | None = None) -> int:
    return sum(
        line.quantity_base
        for d in statement.counted
        for line in d.lines
        if line.kind == kind and (tou is None or line.tou_period == tou)
    )


@pytest.mark.parametrize("tenant_id", ["acme", "globex", "initech"])
def test_statement_totals_equal_the_invoice_and_the_parquet(world: World, tenant_id: str) -> None:
    with world.ledger.transaction() as session:
        statement = build_statement(session, tenant_id, PERIOD, include_drafts=False)
        invoice = get_invoice(session, world.invoices[tenant_id])
        stored = {
            "subtotal": invoice.subtotal,
            "tax": invoice.tax,
            "total": invoice.total,
            "amount_due": invoice.amount_due,
            "lines": [(line.kind, line.amount) for line in invoice.lines],
        }
    assert statement.timezone != "UTC"
    usage = statement.usage
    parquet = parquet_totals(world.usage_root, tenant_id, statement.start_ms, statement.end_ms)
    expected = world.expected[tenant_id]

    # usage: the statement (hourly rollup) = the Parquet = what the world wrote, exactly
    assert usage.total.allocated_gpu_ms == parquet["allocated_gpu_ms"] == expected.allocated_gpu_ms
    assert usage.total.busy_gpu_ms == parquet["busy_gpu_ms"] == expected.busy_gpu_ms
    assert usage.total.energy_mj == parquet["energy_mj"] == expected.energy_mj
    # ... = the invoice's usage lines, in total and per time-of-use period
    assert line_base(statement, "gpu_time") == usage.total.allocated_gpu_ms == statement.usage_lines_gpu_ms
    assert line_base(statement, "energy") == usage.total.energy_mj == statement.usage_lines_energy_mj
    for name in statement.periods:
        assert line_base(statement, "gpu_time", name) == usage.period(name).allocated_gpu_ms, name
        assert line_base(statement, "energy", name) == usage.period(name).energy_mj, name
    # the days and the GPUs each add up to the total
    assert sum(d.total.allocated_gpu_ms for d in statement.days) == usage.total.allocated_gpu_ms
    assert sum(g.total.allocated_gpu_ms for g in statement.gpus) == usage.total.allocated_gpu_ms
    assert sum(g.total.energy_mj for g in statement.gpus) == usage.total.energy_mj
    assert {g.gpu_uuid for g in statement.gpus} == expected.gpus
    assert len(statement.days) == 30 and statement.days[0].label == "2026-11-01"
    if tenant_id == "acme":  # New York's fall-back day has 25 hours; its local day 1 holds 02:00-05:00Z of the 2nd
        assert statement.days[0].end_ms - statement.days[0].start_ms == 25 * HOUR
        assert statement.days[0].total.allocated_gpu_ms == 3 * HOUR
    # money: the statement's = the invoice's; the total is the sum of the rounded lines
    assert [d.invoice.reference for d in statement.invoices] == [world.invoices[tenant_id]]
    for name in ("subtotal", "tax", "total", "amount_due"):
        assert statement.invoiced(name) == stored[name], name
    assert sum((amount for _, amount in stored["lines"]), Decimal(0)) == stored["amount_due"]

    # the CSV says the same, in exact integers and plain decimals
    csv = parse_csv(render_csv(statement))
    totals = {row["field"]: row["value"] for row in csv["totals"]}
    assert int(totals["gpu_ms"]) == parquet["allocated_gpu_ms"]
    assert int(totals["energy_mj"]) == parquet["energy_mj"]
    assert Decimal(totals["total"]) == stored["total"] and Decimal(totals["amount_due"]) == stored["amount_due"]
    assert sum(int(row["gpu_ms"]) for row in csv["usage_day"]) == parquet["allocated_gpu_ms"]
    assert sum(int(row["energy_mj"]) for row in csv["usage_day"]) == parquet["energy_mj"]
    assert sum(int(row["gpu_ms"]) for row in csv["usage_gpu"]) == parquet["allocated_gpu_ms"]
    lines = csv["invoice_line"]
    assert [(row["kind"], Decimal(row["amount"])) for row in lines] == stored["lines"]
    assert sum(int(row["quantity_base"]) for row in lines if row["kind"] == "gpu_time") == parquet["allocated_gpu_ms"]
    assert all(row["usage_matches"] == "true" for row in lines if row["kind"] in ("gpu_time", "energy"))
    by_period = {row["tou_period"]: row for row in csv["usage_total"]}
    assert int(by_period["all"]["gpu_ms"]) == parquet["allocated_gpu_ms"]
    assert sum(int(row["gpu_ms"]) for name, row in by_period.items() if name != "all") == parquet["allocated_gpu_ms"]


def pdf_pages(data: bytes) -> int:
    """Pages of a PDF: /Type /Page objects, in plain or Flate-compressed object streams."""
    text = data
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            text += zlib.decompress(match.group(1))
        except zlib.error:
            continue
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", text))


def test_the_cli_writes_html_pdf_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/billing.db"
    world = build_world(url, tmp_path / "usage")
    out = tmp_path / "statements"
    code = billing_main(
        [
            "statement",
            "--db",
            url,
            "--usage-dir",
            str(world.usage_root),
            "--tenant",
            "initech",
            "--period",
            PERIOD,
            "--out",
            str(out),
            "--locale",
            "ja_JP",
        ]
    )
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"statement-initech-{PERIOD}.{form}" for form in ("csv", "html", "pdf")]
    assert capsys.readouterr().out.split() == [
        str(out / f"statement-initech-{PERIOD}.{f}") for f in ("html", "pdf", "csv")
    ]

    pdf = (out / f"statement-initech-{PERIOD}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert pdf_pages(pdf) >= 2

    html = (out / f"statement-initech-{PERIOD}.html").read_text()
    assert html.count("<svg") >= 2 and 'role="img"' in html and "<title" in html  # the charts, accessible
    assert "Initech Kabushiki" in html and world.invoices["initech"] in html and "Asia/Tokyo" in html

    csv = parse_csv((out / f"statement-initech-{PERIOD}.csv").read_text())
    expected = world.expected["initech"]
    head = {row["field"]: row["value"] for row in csv["statement"]}
    assert (head["tenant_id"], head["period"], head["timezone"]) == ("initech", PERIOD, "Asia/Tokyo")
    totals = {row["field"]: row["value"] for row in csv["totals"]}
    assert (int(totals["gpu_ms"]), int(totals["energy_mj"])) == (expected.allocated_gpu_ms, expected.energy_mj)
    with world.ledger.transaction() as session:
        invoice = get_invoice(session, world.invoices["initech"])
        assert Decimal(totals["total"]) == invoice.total
    # Tokyo: 15:00-17:00Z on the 10th is local 00:00-02:00 on the 11th
    days = {row["date"]: int(row["gpu_ms"]) for row in csv["usage_day"]}
    assert days["2026-11-11"] == expected.allocated_gpu_ms and days["2026-11-10"] == 0

    # --json, one format; errors are one line and exit 2
    code = billing_main(
        [
            "statement",
            "--db",
            url,
            "--tenant",
            "initech",
            "--period",
            PERIOD,
            "--out",
            str(out),
            "--format",
            "csv",
            "--json",
        ]
    )
    assert code == 0 and f'"gpu_ms": {expected.allocated_gpu_ms}' in capsys.readouterr().out
    assert billing_main(["statement", "--db", url, "--tenant", "nobody", "--period", PERIOD, "--out", str(out)]) == 2
    assert "unknown tenant 'nobody'" in capsys.readouterr().err
    assert billing_main(["statement", "--db", url, "--tenant", "initech", "--period", "2026-13"]) == 2


def test_locale_formats_numbers_money_and_dates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/billing.db"
    world = build_world(url, tmp_path / "usage")
    with world.ledger.transaction() as session:
        statement = build_statement(session, "globex", PERIOD)
    german = render_html(statement, "de_DE")
    assert "3,00 GPU-h" in german
    assert "8,12\xa0$" in german
    assert "November 2026" in german
    english = render_html(statement, "en_US")
    assert "3.00 GPU-h" in english and "$8.12" in english
    # a Japanese page first does not make the next locale's months Japanese (see Formatter.month)
    assert Formatter("ja_JP", "JPY", "Asia/Tokyo").month(PERIOD) == "2026年11月"
    assert Formatter("fr_FR", "EUR", "Europe/Paris").month(PERIOD) == "novembre 2026"
    assert negotiate_locale("fr-CH, fr;q=0.9, en;q=0.8") == "fr_CH"
    assert negotiate_locale("xx-YY;q=1, de;q=0.5") == "de"
    assert negotiate_locale("*") == negotiate_locale(None) == negotiate_locale("") == "en_US"
