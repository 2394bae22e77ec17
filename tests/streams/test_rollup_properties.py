"""Property: arrival order within the lateness, duplicates, and restarts from the changelog
at any point (state through JSON) never change a single usage record."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.leases import GpuLeaseTimeline, Lease
from schemas.samples import GpuReading, NodeSample
from schemas.usage import USAGE_FIELD_NAMES
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from tests.support.helpers import T0, simulated_samples

LATENESS_MS = 5_000
TICKS = 150


def rollup_rows(arrivals, leases: LeaseIndex, cut_points: set[int]) -> list[tuple]:
    rollup = NodeRollup(RollupConfig(lateness_ms=LATENESS_MS), leases)
    state = new_state("n1")
    records = []
    for position, sample in enumerate(arrivals):
        if position in cut_points:  # the worker restarts here and restores its state from the changelog
            state = json.loads(json.dumps(state))
        records += rollup.apply(state, sample, sample.seq).records  # offsets follow the message, not arrival
    records += rollup.flush(state)
    return sorted(tuple(r.to_dict().values()) for r in records)


@st.composite
def scenario(draw):
    seed = draw(st.integers(0, 10_000))
    samples, backend = simulated_samples("n1", gpus=2, ticks=TICKS, util=None, seed=seed)
    delays = draw(st.lists(st.integers(0, LATENESS_MS - 1), min_size=TICKS, max_size=TICKS))
    duplicated = draw(st.lists(st.integers(0, TICKS - 1), max_size=30))
    dup_delays = draw(st.lists(st.integers(0, 60_000), min_size=len(duplicated), max_size=len(duplicated)))
    arrivals = [(s.ts_ms + d, i, s) for i, (s, d) in enumerate(zip(samples, delays))]
    arrivals += [(samples[i].ts_ms + d, TICKS + k, samples[i]) for k, (i, d) in enumerate(zip(duplicated, dup_delays))]
    shuffled = [s for _, _, s in sorted(arrivals, key=lambda a: (a[0], a[1]))]
    cuts = set(draw(st.lists(st.integers(0, len(shuffled)), max_size=8)))
    boundary = draw(st.integers(0, TICKS * 1000))
    leases = LeaseIndex()
    gpu = backend.uuids[0]
    leases.put(
        GpuLeaseTimeline(
            gpu, [Lease("a", "t1", gpu, T0, T0 + boundary), Lease("b", "t2", gpu, T0 + boundary + 1, None)]
        )
    )
    return samples, shuffled, cuts, leases


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_order_duplicates_and_restarts_do_not_change_any_record(case):
    in_order, shuffled, cuts, leases = case
    expected = rollup_rows(in_order, leases, set())
    assert rollup_rows(shuffled, leases, cuts) == expected
    energy = USAGE_FIELD_NAMES.index("energy_mj")
    assert sum(row[energy] for row in expected) > 0


@st.composite
def sub_second_trace(draw):
    """One GPU sampled at irregular sub-second intervals (1..999 ms) with any utilization,
    two leases meeting at a random point, and worker restarts (state through JSON) anywhere."""
    count = draw(st.integers(2, 300))
    steps = draw(st.lists(st.integers(1, 999), min_size=count - 1, max_size=count - 1))
    utils = draw(st.lists(st.one_of(st.none(), st.integers(0, 100)), min_size=count, max_size=count))
    start = T0 + draw(st.integers(0, 59_999))
    times = [start]
    for step in steps:
        times.append(times[-1] + step)
    boundary = draw(st.integers(start, times[-1]))
    cuts = set(draw(st.lists(st.integers(0, count), max_size=6)))
    return times, utils, boundary, cuts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sub_second_trace())
def test_busy_over_many_sub_second_intervals_is_the_floor_of_the_exact_integral(case):
    times, utils, boundary, cuts = case
    gpu = "GPU-busy"
    leases = LeaseIndex()
    leases.put(GpuLeaseTimeline(gpu, [Lease("a", "t1", gpu, T0, boundary), Lease("b", "t2", gpu, boundary, None)]))
    rollup = NodeRollup(RollupConfig(lateness_ms=LATENESS_MS), leases)
    state = new_state("n1")
    records = []
    for seq, (ts, util) in enumerate(zip(times, utils)):
        if seq in cuts:
            state = json.loads(json.dumps(state))
        reading = GpuReading(gpu, "m", power_mw=100_000, energy_mj=seq * 37, util_gpu_pct=util)
        sample = NodeSample("n1", "boot", seq, ts, ts, max(1, ts - times[seq - 1]) if seq else 1, [reading])
        records += rollup.apply(state, sample, seq).records
    records += rollup.flush(state)
    exact_pct_ms = sum((b - a) * (util or 0) for a, b, util in zip(times, times[1:], utils[1:]))
    assert sum(r.busy_gpu_ms for r in records) == exact_pct_ms // 100  # windows and the lease split lose no ms
    assert sum(r.allocated_gpu_ms for r in records) == times[-1] - times[0]
    assert sum(r.energy_mj for r in records) == (len(times) - 1) * 37
    assert all(r.busy_gpu_ms <= r.allocated_gpu_ms for r in records)


def test_nvml_errors_are_metered_and_marked_unhealthy_across_a_restart():
    """GPU 0 reports NVML errors from 30 s to 50 s (21 ticks, inside the 30 s gap limit): its counter
    covers the stretch, so the tenant's allocated time is whole, and [30 s, 51 s) is the records'
    unhealthy_ms (version 2). A longer stretch is a gap: unmetered, which the SLA counts too."""
    samples, backend = simulated_samples("n1", gpus=2, ticks=TICKS, util=50, seed=3)
    gpu = backend.uuids[0]
    leases = LeaseIndex()
    leases.put(GpuLeaseTimeline(gpu, [Lease("a", "t1", gpu, T0, None)]))
    clean = rollup_rows(samples, leases, set())
    for sample in samples:
        if T0 + 30_000 <= sample.ts_ms <= T0 + 50_000:
            sample.gpus[0].error = "NVML_ERROR_UNKNOWN"
    column = {name: i for i, name in enumerate(USAGE_FIELD_NAMES)}
    for cuts in (set(), {31, 45, 52}):  # restarts inside and after the stretch change nothing
        rows = rollup_rows(samples, leases, cuts)
        mine = [r for r in rows if r[column["gpu_uuid"]] == gpu]
        assert sum(r[column["unhealthy_ms"]] for r in mine) == 21_000
        assert sum(r[column["allocated_gpu_ms"]] for r in mine) == sum(
            r[column["allocated_gpu_ms"]] for r in clean if r[column["gpu_uuid"]] == gpu
        )
        assert all(r[column["schema_version"]] == 2 for r in rows)
