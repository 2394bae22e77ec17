"""The hourly rollup: exact, idempotent, on SQLite and PostgreSQL (COPY), and streamed a day at a time."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from sqlalchemy import func, select

from billing.ledger.models import UsageHourly
from billing.readmodel.hourly import hourly_rows, rebuild
from tests.support.billing_fixtures import HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, usage_row

DAY = 24 * HOUR


def test_rebuild_counts_each_record_once_and_is_idempotent(tmp_path: Path, billing_db_url: str) -> None:
    usage = tmp_path / "usage"
    first_day = [usage_row("acme", NOV_1 + i * MINUTE, energy_mj=1_000 + i) for i in range(90)]
    second_day = [usage_row("acme", NOV_1 + DAY + i * MINUTE, gpu="GPU-2", energy_mj=7) for i in range(30)]
    writer = UsageWriter(usage)
    writer.write(first_day + second_day)
    writer.write(first_day[:45])  # a second sink generation: copies of the first 45 records
    ledger = ledger_with(billing_db_url)
    for _ in range(2):
        report = rebuild(ledger, usage, "2026-11", NOV_1, NOV_1 + 2 * DAY)
    assert (report.rows, report.records) == (3, 120)
    with ledger.transaction() as session:
        stored = sorted(
            (r.gpu_uuid, r.hour_start_ms, r.allocated_gpu_ms, r.energy_mj, r.records)
            for r in session.scalars(select(UsageHourly))
        )
    assert stored == [
        ("GPU-1", NOV_1, 60 * MINUTE, sum(1_000 + i for i in range(60)), 60),
        ("GPU-1", NOV_1 + HOUR, 30 * MINUTE, sum(1_000 + i for i in range(60, 90)), 30),
        ("GPU-2", NOV_1 + DAY, 30 * MINUTE, 7 * 30, 30),
    ]
    rows, records = hourly_rows(usage, NOV_1, NOV_1 + 2 * DAY)
    assert [(r[1], r[4], r[5], r[7], r[8]) for r in rows] == stored and records == 120
    ledger.dispose()


def _peak_python_bytes(ledger_url: str, usage: Path, days: int) -> tuple[int, int]:
    """Python's peak allocation while rebuilding `days` days, and the rows written."""
    ledger = ledger_with(ledger_url)
    tracemalloc.start()
    try:
        report = rebuild(ledger, usage, f"{days}d", NOV_1, NOV_1 + days * DAY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with ledger.transaction() as session:
        assert session.scalar(select(func.count()).select_from(UsageHourly)) == report.rows
    ledger.dispose()
    return peak, report.rows


def test_the_rollup_never_holds_the_periods_rows_in_python(tmp_path: Path) -> None:
    """One record per GPU-hour, so every record is an hourly row: 8 days are 4x the rows of 2 days,
    and a rollup that listed the period's rows in Python would peak ~4x higher. Streamed a day at a
    time, the peak is a day's batch, whatever the number of days."""
    gpus = 300
    usage = tmp_path / "usage"
    writer = UsageWriter(usage)
    for day in range(8):
        writer.write(
            [
                usage_row("acme", NOV_1 + day * DAY + hour * HOUR, gpu=f"GPU-{g}", energy_mj=g)
                for hour in range(24)
                for g in range(gpus)
            ]
        )
    peak_2, rows_2 = _peak_python_bytes(f"sqlite:///{tmp_path}/two.db", usage, 2)
    peak_8, rows_8 = _peak_python_bytes(f"sqlite:///{tmp_path}/eight.db", usage, 8)
    assert (rows_2, rows_8) == (2 * 24 * gpus, 8 * 24 * gpus)
    assert peak_8 < 1.5 * peak_2, (peak_2, peak_8)
