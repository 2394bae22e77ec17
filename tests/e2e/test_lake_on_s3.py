"""Billing on a usage lake in the real S3-compatible store (SeaweedFS): the invoices, the
reconciliation, the hourly rollup and `explain` equal those of the same records in a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from billing.ledger.db import Ledger
from billing.ledger.models import Invoice, InvoiceLineRow, UsageHourly
from billing.readmodel.hourly import rollup_period
from billing.reconcile.report import to_json
from billing.reconcile.service import reconcile
from billing.usage.reader import explain, list_files
from tests.billing.reconcile.test_reconcile import NOW, build_scenario
from tests.support.billing_fixtures import UsageWriter


def _billed(ledger: Ledger, lake: str | Path) -> dict[str, Any]:
    """Everything billing derived from the lake, in a form two runs can compare."""
    rollup = rollup_period(ledger, lake, "2026-11")
    with ledger.transaction() as session:
        invoices = [(i.number, i.status, str(i.total)) for i in session.scalars(select(Invoice).order_by(Invoice.id))]
        lines = session.scalars(select(InvoiceLineRow).order_by(InvoiceLineRow.id)).all()
        priced = [(line.description, str(line.amount), line.quantity_base) for line in lines]
        explained = [
            explain(lake, line.usage_query).per_gpu
            for line in lines
            if (line.usage_query or {}).get("measure") in ("allocated_gpu_ms", "energy_mj")
        ]
        hourly = sorted(
            (r.tenant_id, r.gpu_uuid, r.hour_start_ms, r.allocated_gpu_ms, r.energy_mj, r.records)
            for r in session.scalars(select(UsageHourly))
        )
    reconciliation = to_json(reconcile(ledger, lake, "2026-11", now_ms=NOW))
    return {
        "invoices": invoices,
        "lines": priced,
        "explained": explained,
        "hourly": hourly,
        "rollup": (rollup.rows, rollup.records),
        "reconciliation": reconciliation,
    }


def test_run_reconcile_rollup_and_explain_on_s3_equal_the_folders(s3_lake: str, tmp_path: Path) -> None:
    on_s3 = UsageWriter(s3_lake)  # type: ignore[arg-type]
    s3_ledger = build_scenario(f"sqlite:///{tmp_path}/s3.db", on_s3)
    folder = UsageWriter(tmp_path / "usage")
    folder_ledger = build_scenario(f"sqlite:///{tmp_path}/folder.db", folder)
    assert all(f.path.startswith("wmlake://wattmeter/") for f in list_files(s3_lake))
    s3_side, folder_side = _billed(s3_ledger, s3_lake), _billed(folder_ledger, folder.root)
    assert s3_side["reconciliation"]["explained"] and s3_side["invoices"] and s3_side["explained"]
    assert s3_side == folder_side
