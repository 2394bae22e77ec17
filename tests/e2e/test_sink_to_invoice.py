"""Parquet sink (durable batches, crash recovery), read back by DuckDB and by billing's usage reader."""

from __future__ import annotations

from pathlib import Path

import duckdb

from billing.usage.reader import OffsetRange, UsageRequest, aggregate, read_cutoff
from schemas.leases import GpuLeaseTimeline, Lease
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from streams.sink import ParquetSink
from tests.support.helpers import T0, simulated_samples


def billed_usage(root: Path, tenant: str) -> tuple[int, int]:
    """(GPU-ms, mJ) billing's reader counts for `tenant` in the hour from T0, from the durable files."""
    request = UsageRequest("q", tenant, T0, T0 + 3_600_000, (T0,), (OffsetRange({}, read_cutoff(root)),))
    usage = aggregate(root, [request])["q"].usage
    return sum(u.allocated_gpu_ms for u in usage), sum(u.energy_mj for u in usage)


def records_for(node: str, tenant: str, ticks: int = 181) -> list[dict]:
    samples, backend = simulated_samples(node, gpus=2, ticks=ticks)
    index = LeaseIndex()
    for uuid in backend.uuids:
        index.put(GpuLeaseTimeline(uuid, [Lease(f"L-{uuid}", tenant, uuid, T0, None)]))
    rollup = NodeRollup(RollupConfig(lateness_ms=0), index)
    state = new_state(node)
    out = [r for i, s in enumerate(samples) for r in rollup.apply(state, s, i).records] + rollup.flush(state)
    return [r.to_dict() for r in out]


def test_sink_files_are_read_by_duckdb_with_the_same_totals(tmp_path: Path):
    rows = records_for("n1", "acme")
    sink = ParquetSink(tmp_path, "usage.records")
    sink.write_batch(0, 0, len(rows) - 1, rows)
    assert sink.next_offset(0) == len(rows)
    total = duckdb.sql(
        f"select sum(allocated_gpu_ms), sum(energy_mj) from read_parquet('{tmp_path}/date=*/*.parquet', "
        "hive_partitioning=true) where tenant_id = 'acme'"
    ).fetchall()[0]
    assert total == (2 * 180_000, 2 * 180 * 385_000)
    assert billed_usage(tmp_path, "acme") == (2 * 180_000, 2 * 180 * 385_000)


def test_crash_between_rename_and_manifest_is_redone_without_double_counting(tmp_path: Path):
    rows = records_for("n1", "acme")
    sink = ParquetSink(tmp_path, "usage.records")
    sink.write_batch(0, 0, 2, rows[:3])
    # a crash after the next batch's rename but before its manifest: simulate by rolling the manifest back
    sink.write_batch(0, 3, len(rows) - 1, rows[3:])
    (tmp_path / "_manifests" / "usage.records-0.json").write_text('{"next_offset": 3}')
    (
        tmp_path / "date=2026-11-02" / "usage.records-p0-00000000000000000099-00000000000000000100.parquet.tmp"
    ).write_bytes(b"half")
    assert sink.recover(0) == 3
    assert len(sink.data_files()) == 1 and not list(tmp_path.glob("date=*/*.tmp"))
    sink.write_batch(0, 3, len(rows) - 1, rows[3:])
    assert billed_usage(tmp_path, "acme") == (2 * 180_000, 2 * 180 * 385_000)
