"""Lease figures: the worker's per-sample lease look-up on a GPU with a year of hourly
leases beside the same look-up on a GPU with one lease, and the size of the timeline the
outbox publishes for that year beside the untrimmed timeline's size."""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from pathlib import Path

from bench.results import BenchResult
from billing.leases.importers import LeaseRow
from billing.leases.outbox import current_timelines, lease_horizon_ms, publish_pending
from billing.leases.service import import_leases, list_leases
from billing.ledger.db import Ledger
from billing.ledger.store import upsert_tenant
from schemas.leases import GpuLeaseTimeline, Lease
from schemas.units import MS_PER_HOUR, MS_PER_MINUTE
from streams.leases import LeaseIndex

YEAR_END_MS = 1_793_836_800_000  # 2026-11-05T00:00:00Z: "now", the end of the leased year
HOUR_MS = MS_PER_HOUR
LEASES = 8_760  # a year of hourly leases
WINDOW_MS = MS_PER_MINUTE
SAMPLES = 100_000
REPEATS = 5


def year_of_leases(gpu: str) -> list[Lease]:
    start = YEAR_END_MS - LEASES * HOUR_MS
    return [
        Lease(f"y-{h}", ("acme", "globex")[h % 2], gpu, start + h * HOUR_MS, start + (h + 1) * HOUR_MS)
        for h in range(LEASES)
    ]


def _lookup_ns(index: LeaseIndex, gpu: str, stamps: list[int]) -> float:
    """Best of REPEATS: ns per sample for lease_at + boundaries over the sample's minute."""
    lease_at, boundaries = index.lease_at, index.boundaries
    best = float("inf")
    for _ in range(REPEATS):
        began = time.perf_counter_ns()
        for ts in stamps:
            lease_at(gpu, ts)
            boundaries(gpu, ts, ts + WINDOW_MS)
        best = min(best, (time.perf_counter_ns() - began) / len(stamps))
    return best


def lookup_cost() -> BenchResult:
    index = LeaseIndex()
    index.put(GpuLeaseTimeline("gpu-year", year_of_leases("gpu-year")))
    index.put(GpuLeaseTimeline("gpu-one", [Lease("one", "acme", "gpu-one", YEAR_END_MS - LEASES * HOUR_MS, None)]))
    rng = random.Random(7)
    # late in the year: the last week, where the old scan from the start of the history was slowest;
    # in order, as a GPU's samples reach the worker (keyed by node, ordered per partition)
    stamps = sorted(YEAR_END_MS - rng.randrange(7 * 24 * HOUR_MS) for _ in range(SAMPLES))
    baseline = _lookup_ns(index, "gpu-one", stamps)
    value = _lookup_ns(index, "gpu-year", stamps)
    return BenchResult(
        name="lease_lookup_ns_per_sample_8760_leases",
        value=round(value, 1),
        unit="ns/sample",
        baseline="the same lease_at + boundaries (1-minute interval) on a GPU with 1 lease",
        baseline_value=round(baseline, 1),
        target="the same as the 1-lease GPU (ratio ~1): O(1) per in-order sample, no scan of the history",
    )


def timeline_size(bootstrap: str) -> BenchResult:
    """Import a year of hourly leases into a throwaway ledger, publish through the outbox to
    the real broker (the producer refuses anything over 1 MiB), and measure what was sent."""
    gpu = f"GPU-bench-{uuid.uuid4().hex[:8]}"
    horizon = lease_horizon_ms()
    with tempfile.TemporaryDirectory(prefix="wattmeter-lease-bench-") as work:
        ledger = Ledger(f"sqlite:///{Path(work) / 'billing.db'}")
        try:
            with ledger.transaction() as session:
                for tenant in ("acme", "globex"):
                    upsert_tenant(session, "bench", tenant)
                rows = [
                    LeaseRow(lease.tenant_id, gpu, lease.start_ms, lease.end_ms, source="bench", line=i + 1)
                    for i, lease in enumerate(year_of_leases(gpu))
                ]
                import_leases(session, rows, actor="bench")
            sent = publish_pending(ledger, bootstrap, horizon, now_ms=YEAR_END_MS)
            assert sent == 1, sent
            with ledger.transaction() as session:
                (published,) = current_timelines(session, [gpu], YEAR_END_MS, horizon)
                full = GpuLeaseTimeline(gpu, list_leases(session, gpu_uuid=gpu))
        finally:
            ledger.dispose()
    return BenchResult(
        name="lease_timeline_kib_8760_hourly_leases",
        value=round(len(published.to_json_bytes()) / 1024, 1),
        unit="KiB",
        baseline="the untrimmed timeline of the same 8760 leases (one message per GPU before)",
        baseline_value=round(len(full.to_json_bytes()) / 1024, 1),
        target="< 1024 KiB (kafka-python's max_request_size), whatever the history; 8-day horizon",
    )


def run(bootstrap: str) -> list[BenchResult]:
    return [lookup_cost(), timeline_size(bootstrap)]
