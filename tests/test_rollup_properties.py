"""Property: arrival order within the lateness, duplicates, and restarts from the changelog
at any point (state through JSON) never change a single usage record."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.leases import GpuLeaseTimeline, Lease
from schemas.usage import USAGE_FIELD_NAMES
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from tests.helpers import T0, simulated_samples

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
