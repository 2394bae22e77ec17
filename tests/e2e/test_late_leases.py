"""Leased time the worker metered as idle bills to the lease (billing.usage.reader.attribute_idle).

Records come from the real rollup core (streams.rollup) and the real sink's files; the expected
figures are worked out here from the idle records themselves, record by record."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from billing.readmodel.hourly import hourly_rows
from billing.usage.reader import OffsetRange, UsageRequest, aggregate, read_cutoff
from deploy.local.pipeline import service_env, start_sink, start_worker
from schemas.leases import GpuLeaseTimeline, Lease
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from streams.sink import ParquetSink
from tests.e2e.test_replay_pipeline import ROOT, START, Pipeline, _base_env, check_read_back, replay, write_log
from tests.support.helpers import T0, simulated_samples

MINUTE = 60_000
HOUR = 3_600_000


def worker_records(node: str, known: list[Lease], gpus: int = 2, ticks: int = 181) -> tuple[list[dict], list[str]]:
    """What the worker writes for `ticks` one-second samples from T0 when it knows `known`."""
    samples, backend = simulated_samples(node, gpus=gpus, ticks=ticks)
    index = LeaseIndex()
    for gpu in backend.uuids:
        index.put(GpuLeaseTimeline(gpu, [lease for lease in known if lease.gpu_uuid == gpu]))
    rollup = NodeRollup(RollupConfig(lateness_ms=0), index)
    state = new_state(node)
    out = [r for i, s in enumerate(samples) for r in rollup.apply(state, s, i).records] + rollup.flush(state)
    return [r.to_dict() for r in out], list(backend.uuids)


def sink(root: Path, *batches: list[dict]) -> None:
    writer = ParquetSink(root, "usage.records")
    offset = 0
    for rows in batches:
        writer.write_batch(0, offset, offset + len(rows) - 1, rows)
        offset += len(rows)


def billed(root: Path, tenant: str, leases: list[Lease]) -> tuple[dict[str, int], dict[str, int], int]:
    """(GPU-ms per lease, attributed GPU-ms per lease, mJ) billing counts for `tenant` in the hour from T0."""
    request = UsageRequest("q", tenant, T0, T0 + HOUR, (T0,), (OffsetRange({}, read_cutoff(root)),))
    result = aggregate(root, [request], leases)["q"]
    per_lease: dict[str, int] = {}
    for row in result.leases:
        per_lease[row.lease_id] = per_lease.get(row.lease_id, 0) + row.allocated_gpu_ms
    return per_lease, result.attributed, sum(u.energy_mj for u in result.usage)


def share(record: dict, lo: int, hi: int, field: str) -> int:
    """The lease [lo, hi)'s part of an idle record's quantity on a minute the worker metered under no
    lease: the lease's share of the minute, floored (one lease per minute here)."""
    ws, we = record["window_start_ms"], record["window_end_ms"]
    overlap = max(0, min(we, hi) - max(ws, lo))
    return record[field] * overlap // (we - ws)


def test_a_lease_imported_after_its_samples_bills_them_whole_and_cut_at_its_edges(tmp_path: Path):
    rows, (g0, g1) = worker_records("n1", known=[])
    assert {r["kind"] for r in rows} == {"idle"}
    sink(tmp_path, rows)
    whole = Lease("L-whole", "acme", g0, T0 - HOUR, None, "valley")  # older than any horizon, still open
    edges = Lease("L-edges", "acme", g1, T0 + 90_000, T0 + 150_500, "on_demand")  # both edges inside a minute
    per_lease, attributed, energy = billed(tmp_path, "acme", [whole, edges])

    idle = {g: [r for r in rows if r["gpu_uuid"] == g] for g in (g0, g1)}
    expected_whole = sum(r["allocated_gpu_ms"] for r in idle[g0])
    expected_edges = sum(share(r, edges.start_ms, edges.end_ms, "allocated_gpu_ms") for r in idle[g1])
    assert expected_whole == 180_000 and expected_edges == 60_500
    assert per_lease == {"L-whole": expected_whole, "L-edges": expected_edges}
    assert attributed == per_lease
    assert energy == sum(r["energy_mj"] for r in idle[g0]) + sum(
        share(r, edges.start_ms, edges.end_ms, "energy_mj") for r in idle[g1]
    )
    # another tenant's lease on the same GPUs takes nothing from acme, and acme nothing without a lease
    assert billed(tmp_path, "other", [whole, edges])[0] == {}
    assert billed(tmp_path, "acme", [])[0] == {}


def test_the_workers_own_split_stands_where_it_knew_the_lease(tmp_path: Path):
    _, (g0, _) = worker_records("n1", known=[])  # learn the uuid, then meter again knowing the lease
    lease = Lease("L-known", "acme", g0, T0 + 90_000, T0 + 150_000)
    rows, _ = worker_records("n1", known=[lease])
    sink(tmp_path, rows)
    per_lease, attributed, _ = billed(tmp_path, "acme", [lease])
    assert per_lease == {"L-known": 60_000} and attributed == {}


def test_a_corrected_later_end_bills_the_minutes_metered_as_idle_after_the_old_end(tmp_path: Path):
    _, (g0, _) = worker_records("n1", known=[])
    told = Lease("L-1", "acme", g0, T0, T0 + 90_000)  # what the worker knew
    rows, _ = worker_records("n1", known=[told])
    sink(tmp_path, rows)
    corrected = Lease("L-1", "acme", g0, T0, T0 + 150_000)  # the ledger after a dispute
    per_lease, attributed, _ = billed(tmp_path, "acme", [corrected])
    # minute 1 holds 30 s under the lease and 30 s idle inside the corrected lease: the idle part moves
    # whole; minute 2 is idle and half of it lies inside the corrected lease
    assert per_lease == {"L-1": 150_000}
    assert attributed == {"L-1": 60_000}


def test_a_stale_idle_copy_of_minutes_metered_again_under_the_lease_counts_once(tmp_path: Path):
    idle, (g0, g1) = worker_records("n1", known=[])
    leases = [Lease("L-a", "acme", g0, T0, None), Lease("L-b", "acme", g1, T0, None)]
    usage, _ = worker_records("n1", known=leases)  # the worker reprocessed after learning of the leases
    sink(tmp_path, idle, usage, idle)  # and a second sink generation wrote the idle batch again
    per_lease, attributed, _ = billed(tmp_path, "acme", leases)
    assert per_lease == {"L-a": 180_000, "L-b": 180_000}
    assert attributed == {}


def test_the_hourly_rollup_moves_the_attributed_time_and_keeps_the_fleet_total(tmp_path: Path):
    rows, (g0, g1) = worker_records("n1", known=[])
    sink(tmp_path, rows, rows)  # two copies of every record
    lease = Lease("L-edges", "acme", g1, T0 + 90_000, T0 + 150_500, "valley")
    before, _ = hourly_rows(tmp_path, T0, T0 + HOUR)
    after, _ = hourly_rows(tmp_path, T0, T0 + HOUR, [lease])
    by_tenant = {(r[0], r[1], r[3]): r[5] for r in after}
    moved = sum(share(r, lease.start_ms, lease.end_ms, "allocated_gpu_ms") for r in rows if r["gpu_uuid"] == g1)
    assert by_tenant[("acme", g1, "valley")] == moved == 60_500
    assert by_tenant[("", g1, "")] == 180_000 - moved and by_tenant[("", g0, "")] == 180_000
    for column in (5, 6, 7):  # allocated, busy and energy: nothing made or lost
        assert sum(int(r[column]) for r in after) == sum(int(r[column]) for r in before)


# ------------------------------------------------------------- the real broker, worker and sink


@pytest.mark.broker
def test_leases_imported_after_their_samples_are_billed_and_a_late_one_is_named(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """An nvidia-smi log of two GPUs is replayed through the real broker, worker and sink with no
    lease known; then the operator imports leases older than the horizon: the invoice bills the
    metered time to them, the reconciliation is clean; a lease imported after the invoice was
    finalized is named as unexplained, exit 1."""
    node, gpus = f"late-{uuid.uuid4().hex[:8]}", [f"GPU-{uuid.uuid4()}", f"GPU-{uuid.uuid4()}"]
    header = "timestamp, uuid, power.draw [W], utilization.gpu [%], utilization.memory [%]"
    trace = tmp_path / "late.csv"
    log = write_log(trace, header, list(gpus), gpus, START, timedelta(0), 250, 1200, seed=11)
    replay(pipeline, node, trace)
    check_read_back(pipeline, node, log, {g: g for g in gpus})
    records = idle_records(pipeline.usage_dir, gpus)
    assert {r["kind"] for r in records} == {"idle"}

    db = f"sqlite:///{tmp_path}/billing.db"
    env = {
        **_base_env(),
        "KAFKA_BOOTSTRAP_SERVERS": pipeline.bootstrap,
        "WATTMETER_BILLING_DB": db,
        "WATTMETER_USAGE_DIR": str(pipeline.usage_dir),
    }
    billing(env, "tenants", "add", "acme", "--currency", "USD", "--timezone", "UTC", "--tax-jurisdiction", "none")
    billing(env, "ratecards", "load", str(ROOT / "billing/ratecards/flat.toml"))
    billing(env, "contracts", "add", "--tenant", "acme", "--rate-card", "flat-2026", "--from", "2026-11-01T00:00Z")
    at = START.replace(microsecond=0)
    whole = ("L-whole", gpus[0], at - timedelta(hours=1), at + timedelta(hours=1))
    edges = ("L-edges", gpus[1], at + timedelta(seconds=90.5), at + timedelta(seconds=180))
    imported = billing(env, "leases", "import", str(lease_file(tmp_path / "leases.csv", [whole, edges])))
    assert "published 2 lease timeline(s) to gpu.leases" in imported.stdout
    assert "note: 2 lease(s) ended more than 8 days ago" in imported.stderr

    billing(env, "run", "--period", "2026-11")
    lines = json.loads(billing(env, "invoices", "show", "1", "--json").stdout)["lines"]
    gpu_ms = sum(int(line["quantity_base"]) for line in lines if line["kind"] == "gpu_time")
    energy = sum(int(line["quantity_base"]) for line in lines if line["kind"] == "energy")
    lo, hi = int(edges[2].timestamp() * 1000), int(edges[3].timestamp() * 1000)
    on_edges = [r for r in records if r["gpu_uuid"] == gpus[1]]
    expected_ms = log.span_ms(gpus[0]) + sum(share(r, lo, hi, "allocated_gpu_ms") for r in on_edges)
    expected_mj = log.energy_mj(gpus[0]) + sum(share(r, lo, hi, "energy_mj") for r in on_edges)
    assert (gpu_ms, energy) == (expected_ms, expected_mj)
    assert expected_ms > log.span_ms(gpus[0]) + 80_000  # most of the 89.5 s lease was metered

    clean = billing(env, "reconcile", "--period", "2026-11", "--no-stripe")
    assert "metered as idle, billed to the lease" in clean.stdout and "L-whole" in clean.stdout

    billing(env, "invoices", "finalize", "--period", "2026-11")
    later = ("L-later", gpus[1], at + timedelta(seconds=200), at + timedelta(seconds=260))
    billing(env, "leases", "import", str(lease_file(tmp_path / "later.csv", [later])))
    flagged = billing(env, "reconcile", "--period", "2026-11", "--no-stripe", expect=1)
    named = [line for line in flagged.stdout.splitlines() if "lease L-later" in line and "not on the invoice" in line]
    assert any("tenant acme, invoice WM-000001" in line for line in named), flagged.stdout


@pytest.fixture(scope="module")
def pipeline(kafka_broker, tmp_path_factory) -> Iterator[Pipeline]:
    work = tmp_path_factory.mktemp("late-leases")
    env = service_env(
        kafka_broker.bootstrap,
        f"late-{uuid.uuid4().hex[:8]}",
        work / "usage",
        work / "state",
        WATTMETER_SINK_SECONDS="0.5",
        WATTMETER_IDLE_CLOSE_MS="2000",
    )
    services = (start_worker(env, work / "worker.log"), start_sink(env, work / "sink.log"))
    yield Pipeline(kafka_broker.bootstrap, work / "usage", work, services)
    for service in services:
        service.stop()


def idle_records(usage_dir: Path, gpus: list[str]) -> list[dict]:
    files = [str(p) for p in usage_dir.glob("date=*/*.parquet")]
    rel = duckdb.sql(f"select distinct * exclude (filename) from read_parquet({files}, filename = true)")
    rows = [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    return [r for r in rows if r["gpu_uuid"] in gpus]


def lease_file(path: Path, leases: list[tuple[str, str, datetime, datetime]]) -> Path:
    rows = ["lease_id,tenant_id,gpu_uuid,start,end,plan"]
    rows += [f"{lid},acme,{gpu},{start.isoformat()},{end.isoformat()},on_demand" for lid, gpu, start, end in leases]
    path.write_text("\n".join(rows) + "\n")
    return path


def billing(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "billing.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == expect, f"{args}: {result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result
