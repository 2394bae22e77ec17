"""The Spark engine against the DuckDB one on the same lake, written by the real sink: three tenants,
two days, two partitions, second-generation copies (some whose earliest copy lies in a file the scan
does not select), adjustments, idle time inside ledger leases the worker did not meter (whole minutes,
minutes cut by lease edges, a stale copy) and pricing segments that cut the day. Every scan must give
the same rows, of the same types, and whole invoices must come out the same."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from billing.invoicing.service import finalize, get_invoice, list_credit_notes, run_period
from billing.leases.service import open_lease
from billing.ledger.db import Ledger
from billing.ledger.models import Invoice
from billing.usage.errors import UsageDataError
from billing.usage.reader import (
    Attribution,
    GroupedRow,
    OffsetRange,
    ScanInput,
    UsageRequest,
    UsageResult,
    aggregate,
    duckdb_grouped,
    read_cutoff,
)
from billing.usage.spark_engine import INSTALL_HINT, NO_JAVA, _spark_path, session, spark_grouped
from schemas.leases import Lease
from schemas.usage import KIND_ADJUSTMENT, KIND_IDLE
from tests.support.billing_fixtures import DEC_1, HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, usage_row

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[3]
NOV_2 = NOV_1 + 24 * HOUR  # a Monday
NOV_3 = NOV_2 + 24 * HOUR
NOON = NOV_2 + 12 * HOUR
SECOND = 1_000
TENANTS = ("acme", "globex", "initech")
LEASES = (
    Lease("L-a2-1", "acme", "GPU-a2", NOON - MINUTE, NOON + 2 * MINUTE + 30 * SECOND),  # the worker knew it
    Lease("L-a2-2", "acme", "GPU-a2", NOON + 2 * MINUTE + 30 * SECOND, NOON + 7 * MINUTE + 15 * SECOND),  # late
    Lease("L-a2-3", "globex", "GPU-a2", NOON + 7 * MINUTE + 15 * SECOND, NOON + 9 * MINUTE + 40 * SECOND),  # late
    Lease("L-i1", "initech", "GPU-i1", NOV_3 + 9 * HOUR, None),  # imported after its samples, still open
)


def record(tenant: str, ws: int, gpu: str, n: int, **kwargs: Any) -> dict[str, Any]:
    """A usage record whose energy differs from record to record (odd, so that shares floor)."""
    return usage_row(tenant, ws, gpu=gpu, energy_mj=1_000_003 + 7_919 * n, **kwargs)


def run(tenant: str, start: int, count: int, gpu: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [record(tenant, start + i * MINUTE, gpu, i, **kwargs) for i in range(count)]


def idle(gpu: str, ws: int, allocated: int = MINUTE, n: int = 0) -> dict[str, Any]:
    """An idle record as the worker writes it: no tenant, lease or plan."""
    row = record("", ws, gpu, n, kind=KIND_IDLE, allocated_ms=allocated)
    row.update(tenant_id="", lease_id="", plan="", record_id=f"{gpu}/{ws}/{KIND_IDLE}///")
    return row


def gpu_a2_minutes() -> list[dict[str, Any]]:
    """GPU-a2 from 11:59 to 12:10 on Nov 2, as a worker that learnt of L-a2-2 and L-a2-3 too late wrote it."""
    rows = run("acme", NOON - MINUTE, 3, "GPU-a2", lease="L-a2-1")  # 11:59-12:02, metered under L-a2-1
    rows.append(record("acme", NOON + 2 * MINUTE, "GPU-a2", 3, lease="L-a2-1", allocated_ms=30 * SECOND))
    rows.append(idle("GPU-a2", NOON + 2 * MINUTE, 30 * SECOND))  # 12:02: the other half goes to L-a2-2
    rows += [idle("GPU-a2", NOON + m * MINUTE, n=m) for m in (3, 4, 5, 7, 8, 9, 10)]
    rows.append(record("acme", NOON + 5 * MINUTE, "GPU-a2", 5, lease="L-a2-2"))  # 12:05 reprocessed: idle is stale
    rows.append(record("acme", NOON + 6 * MINUTE, "GPU-a2", 6, lease="L-a2-2", allocated_ms=25 * SECOND))
    rows.append(idle("GPU-a2", NOON + 6 * MINUTE, 35 * SECOND, n=6))  # 12:06: L-a2-2 covers it: moves whole
    return rows


@dataclass
class Lake:
    root: Path
    first_of_second_generation: dict[int, int]


def write_lake(root: Path) -> Lake:
    """The lake of the module docstring; the second generation starts at the offsets returned."""
    p0, p1 = UsageWriter(root, 0), UsageWriter(root, 1)
    acme = run("acme", NOV_2 + 8 * HOUR, 30, "GPU-a1") + run("acme", NOV_3 + 8 * HOUR, 20, "GPU-a3", model="A100")
    p0.write(acme)  # one batch, two day files
    p0.write(run("acme", NOV_2 + 8 * HOUR + 5 * MINUTE, 5, "GPU-a1", kind=KIND_ADJUSTMENT, allocated_ms=1_500))
    p0.write([record("acme", NOV_2 + 9 * HOUR, "GPU-a1", 0, kind=KIND_ADJUSTMENT, allocated_ms=-2_000, suffix="/fix")])
    a2 = gpu_a2_minutes()
    p0.write(a2)
    globex = run("globex", NOV_2 + 23 * HOUR + 40 * MINUTE, 40, "GPU-g1", model="A100")
    p1.write(globex)
    initech = run("initech", NOV_3 + 10 * HOUR + 10 * MINUTE, 20, "GPU-i1", lease="L-i1")
    i1_idle = [idle("GPU-i1", NOV_3 + 9 * HOUR + m * MINUTE, n=m) for m in range(6)]
    p1.write(initech + i1_idle)
    second = {0: p0.next_offset, 1: p1.next_offset}
    # a second sink generation: copies of records already written, and a few new ones
    p0.write(acme[5:12] + [r for r in a2 if r["kind"] == KIND_IDLE][1:3])
    p0.write(run("acme", NOV_2 + 14 * HOUR, 3, "GPU-a1", kind=KIND_ADJUSTMENT, suffix="/r2"))
    p1.write(globex[10:15] + i1_idle[2:4] + run("globex", NOV_3 + 2 * HOUR, 4, "GPU-g1", model="A100"))
    p1.write(globex[30:32])
    return Lake(root, second)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One SparkSession (local[2]) for the module, stopped at its end."""
    started = session()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return write_lake(tmp_path_factory.mktemp("spark") / "usage lake")


class CheckedSpark:
    """An engine that runs every scan on both engines, checks that they agree exactly (the rows as a
    multiset, value and Python type; the attribution as a list) and answers with Spark's."""

    def __init__(self) -> None:
        self.scans = 0
        self.lock = threading.Lock()

    def __call__(self, scan: ScanInput) -> tuple[list[GroupedRow], list[Attribution]]:
        rows, attribution = spark_grouped(scan)
        expected_rows, expected_attribution = duckdb_grouped(scan)
        assert typed(rows) == typed(expected_rows)
        assert attribution == expected_attribution
        assert [tuple(map(type, a)) for a in attribution] == [(str, str, int)] * len(attribution)
        with self.lock:
            self.scans += 1
        return rows, attribution


def typed(rows: list[GroupedRow]) -> Counter[tuple[tuple[type, Any], ...]]:
    return Counter(tuple((type(value), value) for value in row) for row in rows)


def flattened(results: dict[str, UsageResult]) -> dict[str, tuple[Any, ...]]:
    return {
        key: (sorted(r.usage, key=repr), sorted(r.leases, key=repr), r.records, dict(sorted(r.attributed.items())))
        for key, r in results.items()
    }


def requests_of(lake: Lake) -> list[list[UsageRequest]]:
    """Calls of `aggregate`: all tenants over everything, with windows and segments that cut the days
    (one scan); and late views whose earliest copies lie in files the scan sees but does not select,
    beside the view of the first generation only (two scans)."""
    cutoff = read_cutoff(lake.root)
    everything = (OffsetRange({}, cutoff),)
    late = (OffsetRange(lake.first_of_second_generation, cutoff),)
    first = (OffsetRange({}, lake.first_of_second_generation),)
    acme_start = NOV_2 + 8 * HOUR + 10 * MINUTE  # cuts acme's first run; a one-minute grain
    acme_segments = (acme_start, NOON + 4 * MINUTE, NOV_3 + 6 * HOUR)
    globex_segments = (NOV_2, NOV_2 + 23 * HOUR + 30 * MINUTE)  # a 30-minute grain
    initech_segments = (NOV_1, NOV_3 + 10 * HOUR + 15 * MINUTE)  # cuts initech's run
    return [
        [
            UsageRequest("acme", "acme", acme_start, NOV_3 + 8 * HOUR + 10 * MINUTE, acme_segments, everything),
            UsageRequest("globex", "globex", NOV_2, NOV_3 + 20 * HOUR, globex_segments, everything),
            UsageRequest("initech", "initech", NOV_1, DEC_1, initech_segments, everything),
        ],
        [
            UsageRequest("acme/late", "acme", NOV_1, DEC_1, (NOV_1, NOON), late),
            UsageRequest("globex/late", "globex", NOV_1, DEC_1, (NOV_1,), late),
            UsageRequest("initech/late", "initech", NOV_1, DEC_1, (NOV_1, NOV_3), late),
            UsageRequest("acme/first", "acme", NOV_1, DEC_1, (NOV_1,), first),
        ],
    ]


def test_every_scan_gives_duckdbs_rows_and_the_quantities_are_identical(spark: Any, lake: Lake):
    checked = CheckedSpark()
    full_view, late_views = requests_of(lake)
    apart = ("L-a2-2", "L-i1")  # preempted leases: their usage rows also come apart (billing.pricing.rating)
    calls = {
        "full": (full_view, LEASES, ()),
        "no leases": (full_view, (), ()),
        "late": (late_views, LEASES, ()),
        "apart": (full_view, LEASES, apart),
    }

    def both(requests: list[UsageRequest], leases: tuple[Lease, ...], apart: tuple[str, ...]) -> dict[str, UsageResult]:
        on_spark = aggregate(lake.root, requests, leases, engine=checked, apart=apart)
        assert flattened(on_spark) == flattened(aggregate(lake.root, requests, leases, apart=apart))
        return on_spark

    with ThreadPoolExecutor(len(calls)) as pool:  # Spark runs the jobs side by side: most of a tiny job is waiting
        results = dict(zip(calls, pool.map(both, *zip(*calls.values()))))
    assert checked.scans == 1 + 1 + 2 + 1  # the late views and the first generation's are two scans
    # the lake exercises what it should: idle time moved to late leases, whole and cut at their edges,
    # copies counted once, and copies whose earliest file is not selected not counted at all
    full = results["full"]
    assert full["acme"].attributed == {"L-a2-2": 30_000 + 2 * 60_000 + 35_000 + 15_000}
    assert full["globex"].attributed == {"L-a2-3": 45_000 + 60_000 + 40_000}
    assert full["initech"].attributed == {"L-i1": 6 * 60_000}
    assert results["no leases"]["acme"].attributed == {}
    for tenant, lease in (("acme", "L-a2-2"), ("initech", "L-i1")):  # apart rows: the lease's own usage, and
        split = results["apart"][tenant]  # the pooled rows still sum to the same usage
        own = sum(r.allocated_gpu_ms for r in split.usage if r.apart_lease == lease)
        assert own == sum(q.allocated_gpu_ms for q in split.leases if q.lease_id == lease) > 0
        assert sum(r.allocated_gpu_ms for r in split.usage) == sum(r.allocated_gpu_ms for r in full[tenant].usage)
    assert {r.apart_lease for r in full["acme"].usage} == {""}
    late = results["late"]
    assert (late["acme/late"].records, late["globex/late"].records, late["initech/late"].records) == (3, 4, 0)


def test_run_period_on_spark_makes_the_same_invoices(spark: Any, tmp_path: Path):
    """November on both engines, finalized; then late usage (new records beside copies of counted
    ones, a negative adjustment): December's corrections and credit note on both engines."""
    lake = write_lake(tmp_path / "usage")
    tenants = {tenant: {"tax_jurisdiction": "XX"} for tenant in TENANTS}
    ledgers = {name: ledger_with(f"sqlite:///{tmp_path}/{name}.db", tenants=tenants) for name in ("duckdb", "spark")}
    engines = {"duckdb": None, "spark": spark_grouped}
    for ledger in ledgers.values():
        with ledger.transaction() as session:
            for lease in LEASES:
                open_lease(
                    session,
                    lease.tenant_id,
                    lease.gpu_uuid,
                    lease.start_ms,
                    lease.end_ms,
                    lease.plan,
                    lease.lease_id,
                    actor="test",
                )

    def run_both(period: str) -> None:
        reports = {
            name: run_period(ledger, lake.root, period, "test", engine=engines[name])
            for name, ledger in ledgers.items()
        }
        assert [outcome_of(o) for o in reports["spark"].outcomes] == [outcome_of(o) for o in reports["duckdb"].outcomes]
        assert documents(ledgers["spark"]) == documents(ledgers["duckdb"])

    run_both("2026-11")
    for ledger in ledgers.values():
        with ledger.transaction() as session:
            drafts = [i.id for i in session.query(Invoice).filter(Invoice.status == "draft")]
        for invoice_id in drafts:
            finalize(ledger, "test", invoice_id)
    p0, p1 = UsageWriter(lake.root, 0), UsageWriter(lake.root, 1)
    p0.write(gpu_a2_minutes()[4:] + run("acme", NOV_2 + 16 * HOUR, 6, "GPU-a1", kind=KIND_ADJUSTMENT, suffix="/r3"))
    p1.write(
        run("globex", NOV_2 + 23 * HOUR + 40 * MINUTE, 3, "GPU-g1", model="A100")
        + [
            record(
                "globex",
                NOV_3,
                "GPU-g1",
                9,
                kind=KIND_ADJUSTMENT,
                model="A100",
                allocated_ms=-2 * MINUTE,
                suffix="/fix",
            )
        ]
    )
    run_both("2026-12")
    with ledgers["spark"].transaction() as session:
        december = session.query(Invoice).filter(Invoice.period == "2026-12").all()
        assert any(line.correction for invoice in december for line in invoice.lines)
        assert list_credit_notes(session, "globex")


def outcome_of(outcome: Any) -> tuple[Any, ...]:
    return (
        outcome.tenant_id,
        outcome.period,
        outcome.status,
        outcome.number,
        outcome.total,
        outcome.amount_due,
        outcome.corrections,
        outcome.credit_notes,
    )


def documents(ledger: Ledger) -> list[Any]:
    """Every invoice (totals, hash, cut-off and lines) and credit note, without ids and clock times."""
    with ledger.transaction() as session:
        invoices = session.query(Invoice).order_by(Invoice.tenant_id, Invoice.period).all()
        found: list[Any] = [
            (
                i.tenant_id,
                i.period,
                i.status,
                i.number,
                i.subtotal,
                i.tax,
                i.total,
                i.credits_applied,
                i.amount_due,
                i.content_hash,
                i.usage_cutoff,
                [
                    (
                        line.position,
                        line.kind,
                        line.description,
                        line.service_start_ms,
                        line.service_end_ms,
                        line.service_period,
                        line.correction,
                        line.plan,
                        line.model,
                        line.tou_period,
                        line.tier,
                        line.quantity_base,
                        line.quantity,
                        line.unit_price,
                        line.amount,
                        line.usage_query,
                    )
                    for line in get_invoice(session, i.id).lines
                ],
            )
            for i in invoices
        ]
        found += [(n.number, n.tenant_id, n.amount, n.reason, n.lines) for n in list_credit_notes(session)]
    return found


def test_a_damaged_file_is_one_line_of_usage_data_error(spark: Any, tmp_path: Path):
    writer = UsageWriter(tmp_path / "usage")
    writer.write(run("acme", NOV_2, 3, "GPU-a1"))
    next((tmp_path / "usage").glob("date=*/*.parquet")).write_bytes(b"not a parquet file" * 8)
    request = UsageRequest("q", "acme", NOV_1, DEC_1, (NOV_1,), (OffsetRange({}, read_cutoff(writer.root)),))
    with pytest.raises(UsageDataError) as caught:
        aggregate(writer.root, [request], engine=spark_grouped)
    assert str(caught.value).startswith("cannot read the usage Parquet: ")
    assert "usage.records-p0-" in str(caught.value)  # the file, from the Java exception
    assert "\n" not in str(caught.value)


PROBE = """
from billing.usage.spark_engine import session
try:
    session()
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_without_java_or_pyspark_the_error_says_what_is_missing(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | {"PATH": str(tmp_path)}
    no_java = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert no_java.stdout.strip() == f"UsageDataError {NO_JAVA}", no_java.stderr
    # the same interpreter and packages, less pyspark and py4j
    import pyspark

    site = tmp_path / "site-packages"
    site.mkdir()
    for entry in Path(pyspark.__file__).parents[1].iterdir():
        if not entry.name.lower().startswith(("pyspark", "py4j")):
            (site / entry.name).symlink_to(entry)
    code = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(site)!r}]\n{PROBE}"
    no_pyspark = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert no_pyspark.stdout.strip() == f"UsageDataError {INSTALL_HINT}", no_pyspark.stderr


def test_lake_objects_are_read_through_s3a_and_local_files_by_absolute_path(tmp_path: Path, monkeypatch):
    assert (
        _spark_path("wmlake://wattmeter/usage/date=2026-11-02/f.parquet")
        == "s3a://wattmeter/usage/date=2026-11-02/f.parquet"
    )
    monkeypatch.chdir(tmp_path)
    assert _spark_path("usage/date=2026-11-02/f.parquet") == f"{tmp_path}/usage/date=2026-11-02/f.parquet"
    assert _spark_path("file:///lake/f.parquet") == "file:///lake/f.parquet"


def test_version_1_and_2_files_read_alike_and_nvml_error_time_sums_per_lease(spark: Any, tmp_path: Path):
    """A version 1 file (no unhealthy_ms column) beside version 2 files, in either order of names:
    both engines read them by name and give each lease its NVML error time."""
    from schemas.parquet import usage_arrow_schema

    writer = UsageWriter(tmp_path / "usage")
    new = usage_arrow_schema()
    writer.write([{**row, "unhealthy_ms": 20_000} for row in rows_of("acme", NOV_1 + HOUR, 3, lease="L-new")])
    writer.sink.schema = new.remove(new.get_field_index("unhealthy_ms"))
    writer.write([{**row, "schema_version": 1} for row in rows_of("acme", NOV_1 + 2 * HOUR, 2, lease="L-old")])
    writer.sink.schema = new
    cutoff = read_cutoff(writer.root)
    request = UsageRequest("acme", "acme", NOV_1, DEC_1, (NOV_1,), (OffsetRange({}, cutoff),))
    duck = aggregate(writer.root, [request])["acme"]
    assert {q.lease_id: q.unhealthy_ms for q in duck.leases} == {"L-new": 60_000, "L-old": 0}
    assert flattened({"acme": duck}) == flattened(aggregate(writer.root, [request], engine=spark_grouped))


def rows_of(tenant: str, start_ms: int, count: int, lease: str) -> list[dict[str, Any]]:
    return [usage_row(tenant, start_ms + i * MINUTE, lease=lease, gpu=f"GPU-{lease}") for i in range(count)]
