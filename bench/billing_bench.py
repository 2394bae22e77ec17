"""Billing benchmark: rate 10 million usage records, from Parquet to invoice lines, beside
DuckDB computing the same grouped sums over the same files in the same run.

The load is a month (November 2026) of one-minute usage records for 232 GPUs (10,022,400
records; `LOAD_43M`: 1,000 GPUs, 43.2 M) rented by 20 tenants on daily leases, written once in
the sink's own layout (a folder per day, offset-named files, manifests) and cached under .wattmeter/.

Each side runs in a fresh process so that its peak memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import BenchResult
from schemas.units import MS_PER_MINUTE

ROOT = Path(__file__).resolve().parents[1]
PERIOD = "2026-11"
PERIOD_START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
DAYS = 30
MINUTES = DAYS * 24 * 60
TENANTS = 20
MODELS = ("H100", "A100", "L40S")
PARTITIONS = 4
CARD = ROOT / "billing" / "ratecards" / "demo.toml"


@dataclass(frozen=True)
class Load:
    """A month of one-minute usage records for `gpus` GPUs, in the sink's layout (one `date=` folder
    per UTC day, one offset-named file per usage.records partition and day, manifests), cached."""

    gpus: int
    folder: str
    days: int = DAYS  # the first `days` days of November

    @property
    def root(self) -> Path:
        return ROOT / ".wattmeter" / self.folder

    @property
    def records(self) -> int:
        return self.gpus * self.days * 24 * 60


LOAD_10M = Load(232, "bench-usage-10m-days")  # 10,022,400 records
LOAD_43M = Load(1000, "bench-usage-43m-days")  # 43,200,000 records: a month of 1,000 GPUs
LOAD_WEEK = Load(1000, "bench-usage-1000gpu-7d", days=7)  # 10,080,000 records: a week of the same fleet
GPUS = LOAD_10M.gpus
LOAD_DIR = LOAD_10M.root


def write_load(load: Load = LOAD_10M) -> int:
    """Write the load once (about a minute per 10 M records); returns the record count."""
    import numpy as np

    root = load.root
    marker = root / "_complete.json"
    if marker.exists():
        return int(json.loads(marker.read_text())["records"])
    (root / "_manifests").mkdir(parents=True, exist_ok=True)
    offsets = [0] * PARTITIONS
    rng = np.random.default_rng(7)
    gpus = np.arange(load.gpus, dtype=np.int64)
    for day in range(load.days):
        minute = np.repeat(np.arange(day * 1440, (day + 1) * 1440, dtype=np.int64), load.gpus)
        gpu = np.tile(gpus, 1440)
        for partition in range(PARTITIONS):  # usage.records is keyed by tenant
            mine = (gpu % TENANTS) % PARTITIONS == partition
            first = offsets[partition]
            offsets[partition] += int(mine.sum())
            folder = root / f"date=2026-11-{day + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"usage.records-p{partition}-{first:020d}-{offsets[partition] - 1:020d}.parquet"
            _write_chunk(folder / name, gpu[mine], minute[mine], rng, first)
    for partition, offset in enumerate(offsets):
        (root / "_manifests" / f"usage.records-{partition}.json").write_text(json.dumps({"next_offset": offset}))
    marker.write_text(json.dumps({"records": load.records}))
    return load.records


def _write_chunk(path: Path, gpu: Any, minute: Any, rng: Any, first_offset: int) -> None:
    """One file of the load: the records of (gpu[i], minute[i]), offsets from `first_offset`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.parquet import usage_arrow_schema

    schema = usage_arrow_schema()
    n = len(gpu)
    index = np.arange(first_offset, first_offset + n, dtype=np.int64)
    start = PERIOD_START_MS + minute * MS_PER_MINUTE
    tenant = gpu % TENANTS
    day = minute // 1440
    energy = rng.integers(12_000_000, 42_000_000, n, dtype=np.int64)
    busy = rng.integers(0, 60_001, n, dtype=np.int64)
    strings = {
        "record_id": pa.array(np.char.add(np.char.add(gpu.astype("U4"), "-"), minute.astype("U6"))),
        "kind": pa.array(["usage"] * n),
        "tenant_id": pa.array(np.char.add("tenant-", tenant.astype("U2"))),
        "lease_id": pa.array(np.char.add(np.char.add(np.char.add("lease-", gpu.astype("U4")), "-"), day.astype("U2"))),
        "plan": pa.array(np.where(gpu % 5 == 0, "valley", "on_demand")),
        "node_id": pa.array(np.char.add("node-", (gpu // 8).astype("U3"))),
        "gpu_uuid": pa.array(np.char.add("GPU-", gpu.astype("U4"))),
        "model": pa.array(np.array(MODELS)[gpu % len(MODELS)]),
        "tou_period": pa.array(["peak"] * n),
    }
    ints = {
        "window_start_ms": start,
        "window_end_ms": start + MS_PER_MINUTE,
        "allocated_gpu_ms": np.full(n, MS_PER_MINUTE, dtype=np.int64),
        "busy_gpu_ms": busy,
        "energy_mj": energy,
        "avg_power_mw": energy // 60,
        "peak_power_mw": energy // 50,
        "sample_count": np.full(n, 60, dtype=np.int64),
        "observed_ms": np.full(n, MS_PER_MINUTE, dtype=np.int64),
        "unmetered_ms": np.zeros(n, dtype=np.int64),
        "source_offset_min": index,
        "source_offset_max": index,
    }
    columns = {**strings, **{k: pa.array(v) for k, v in ints.items()}}
    columns["source_partition"] = pa.array(np.zeros(n, dtype=np.int32))
    columns["schema_version"] = pa.array(np.ones(n, dtype=np.int16))
    table = pa.table([columns[f.name] for f in schema], schema=schema)
    pq.write_table(table, path, row_group_size=128 * 1024)


WATTMETER_SIDE = """
import resource, sys, time, json
from pathlib import Path
from billing.ledger.db import Ledger
from schemas.units import MS_PER_DAY
from billing.ledger.store import add_contract, store_rate_card, upsert_tenant
from billing.pricing.ratecards import load_rate_card
from billing.invoicing.service import run_period
from billing.usage.engines import engine_named
db, usage, card_path = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
tenants, period_start = int(sys.argv[4]), int(sys.argv[5])
engine = engine_named(sys.argv[6] if len(sys.argv) > 6 else "duckdb")
ledger = Ledger(db)
card = load_rate_card(Path(card_path))
with ledger.transaction() as s:
    store_rate_card(s, "bench", card)
    for t in range(tenants):
        upsert_tenant(s, "bench", f"tenant-{t}", currency=card.currency, timezone="UTC", tax_jurisdiction="*")
        add_contract(s, "bench", f"tenant-{t}", card.name, period_start - MS_PER_DAY * 60)
began = time.perf_counter()
report = run_period(ledger, usage, "2026-11", "bench", engine=engine)
elapsed = time.perf_counter() - began
with ledger.transaction() as s:
    from sqlalchemy import func, select
    from billing.ledger.models import Invoice, InvoiceLineRow
    lines = s.scalar(select(func.count()).select_from(InvoiceLineRow))
    from decimal import Decimal
    total = str(sum((invoice.total for invoice in s.query(Invoice)), Decimal(0)))  # SQLite's sum() is a float
print(json.dumps({"seconds": elapsed, "lines": lines, "invoices": len(report.outcomes), "total": total,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

DUCKDB_SIDE = """
import resource, sys, time, json
import duckdb
usage = sys.argv[1]
began = time.perf_counter()
con = duckdb.connect(config={"threads": 2})
rows = con.execute(f'''
    SELECT tenant_id, plan, model, lease_id, hour(timezone('America/New_York', make_timestamp(window_start_ms * 1000)))
               BETWEEN 6 AND 21 AS peak, sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(energy_mj), count(*)
    FROM read_parquet('{usage}/date=*/*.parquet')
    WHERE kind IN ('usage', 'adjustment') AND window_start_ms >= 1793491200000 AND window_start_ms < 1796083200000
    GROUP BY GROUPING SETS ((tenant_id, plan, model, peak), (tenant_id, lease_id, plan, model))''').fetchall()
elapsed = time.perf_counter() - began
print(json.dumps({"seconds": elapsed, "groups": len(rows),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


# A child's ru_maxrss starts at its parent's RSS (Linux carries the forking process's high-water
# mark through fork and exec), so each side is started by a small launcher process: its peak is
# then its own, not that of the process running the benchmarks.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', *sys.argv[1:]]).returncode)"


def _side(code: str, *argv: str) -> dict[str, float]:
    """Run `code` in a fresh process (through LAUNCHER) that prints one JSON line; that line."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, code, *argv], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark side failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(bootstrap: str | None = None) -> list[BenchResult]:
    began = time.monotonic()
    records = write_load()
    print(f"billing bench: {records:,} usage records ready in {time.monotonic() - began:.0f} s", flush=True)
    baseline = _side(DUCKDB_SIDE, str(LOAD_DIR))
    with tempfile.TemporaryDirectory() as tmp:
        ours = _side(
            WATTMETER_SIDE, f"sqlite:///{tmp}/bench.db", str(LOAD_DIR), str(CARD), str(TENANTS), str(PERIOD_START_MS)
        )
    return [
        BenchResult(
            name="rate_10m_usage_records_s",
            value=round(ours["seconds"], 3),
            unit=f"s for {records:,} records -> {int(ours['lines'])} invoice lines ({int(ours['invoices'])} invoices)",
            baseline=(
                "DuckDB alone: the same grouped sums (tenant, plan, model, peak/valley; per lease) over the same"
                " files, no dedupe, same run"
            ),
            baseline_value=round(baseline["seconds"], 3),
            target="within 2x of DuckDB (ratio <= 2)",
        ),
        BenchResult(
            name="rate_10m_usage_records_peak_rss",
            value=round(ours["peak_rss_mib"], 1),
            unit="MiB peak RSS of the rating process",
            baseline="DuckDB grouped sums process, peak RSS",
            baseline_value=round(baseline["peak_rss_mib"], 1),
            target="reported",
        ),
    ]


if __name__ == "__main__":
    from bench.results import table

    print(table(run()))
