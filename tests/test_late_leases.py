"""Leased time the worker metered as idle bills to the lease (billing.usage.reader.attribute_idle).

Records come from the real rollup core (streams.rollup) and the real sink's files; the expected
figures are worked out here from the idle records themselves, record by record."""

from __future__ import annotations

from pathlib import Path

from billing.usage.reader import OffsetRange, UsageRequest, aggregate, read_cutoff
from billing.usage.rollup import hourly_rows
from schemas.leases import GpuLeaseTimeline, Lease
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from streams.sink import ParquetSink
from tests.helpers import T0, simulated_samples

MINUTE = 60_000
HOUR = 3_600_000


def worker_records(node: str, known: list[Lease], gpus: int = 2, ticks: int = 181) -> tuple[list[dict], list[str]]:
    """What the worker writes for `ticks` one-second samples from T0 when it knows `known`."""
    samples, backend = simulated_samples(node, gpus=gpus, ticks=ticks)
    index = LeaseIndex()
    for uuid in backend.uuids:
        index.put(GpuLeaseTimeline(uuid, [lease for lease in known if lease.gpu_uuid == uuid]))
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
    """The lease [lo, hi)'s part of an idle record's quantity: its share of the minute, floored."""
    ws, we = record["window_start_ms"], record["window_end_ms"]
    a, b = max(ws, lo) - ws, min(we, hi) - ws
    return record[field] * max(b, 0) // (we - ws) - record[field] * max(a, 0) // (we - ws) if b > a else 0


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
    lease = Lease("L-known", "acme", "", T0 + 90_000, T0 + 150_000)
    rows, (g0, _) = worker_records("n1", known=[])  # learn the uuid, then meter again knowing the lease
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
