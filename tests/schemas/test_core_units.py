"""Unit tests of the pure core: units, deltas, windows, leases, dedupe, rollup."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.leases import GpuLeaseTimeline, Lease
from schemas.samples import GpuReading
from schemas.units import (
    MAX_INSTANT_MS,
    check_instant_ms,
    datetime_to_ms,
    energy_mj,
    gpu_hours,
    kwh,
    ms_to_datetime,
    watts_to_mw,
)
from streams import deltas
from streams.dedupe import seen_before
from streams.errors import ConfigError
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from streams.windows import ValleyHours, check_window, cut_points, share
from tests.support.helpers import T0, simulated_samples


def test_unit_conversions_are_exact():
    assert energy_mj(385_000, 1000) == 385_000
    assert gpu_hours(5_400_000) == Decimal("1.5")
    assert kwh(3_600_000_000) == Decimal(1)
    assert watts_to_mw("31.005") == 31_005
    assert datetime_to_ms(datetime(2026, 11, 2, tzinfo=timezone.utc)) == T0
    with pytest.raises(ValueError, match="naive"):
        datetime_to_ms(datetime(2026, 11, 2))


def reading(energy, power=100_000, util=50, reset=False, error=None):
    return GpuReading("g", "m", power_mw=power, energy_mj=energy, util_gpu_pct=util, counter_reset=reset, error=error)


def test_delta_uses_counter_then_falls_back_across_a_reset():
    cursor, interval = deltas.step(None, 0, reading(1_000), 30_000)
    assert interval is None
    cursor, interval = deltas.step(cursor, 1000, reading(1_100), 30_000)
    assert (interval.energy_mj, interval.busy_ms, interval.from_counter) == (100, 500, True)
    # driver reload: counter back to 5, energy from the mean power x time
    cursor, interval = deltas.step(cursor, 2000, reading(5, power=300_000, reset=True), 30_000)
    assert (interval.energy_mj, interval.from_counter) == ((100_000 + 300_000) * 1000 // 2000, False)
    # counter going backwards without the flag is treated as a reset too
    cursor, interval = deltas.step(cursor, 3000, reading(1, power=300_000), 30_000)
    assert interval.energy_mj == 300_000 and not interval.from_counter


def test_error_keeps_cursor_so_the_counter_covers_the_failure_and_marks_it_unhealthy():
    cursor, _ = deltas.step(None, 0, reading(0), 30_000)
    same, interval = deltas.step(cursor, 1000, reading(None, error="NVML_ERROR_GPU_IS_LOST"), 30_000)
    assert (same.ts_ms, same.energy_mj, same.error_since_ms) == (cursor.ts_ms, cursor.energy_mj, 1000)
    assert interval is None
    again, _ = deltas.step(same, 2000, reading(None, error="NVML_ERROR_UNKNOWN"), 30_000)
    assert again == same  # the stretch began at the first error
    healed, interval = deltas.step(again, 3000, reading(600), 30_000)
    assert (interval.start_ms, interval.end_ms, interval.energy_mj, interval.metered) == (0, 3000, 600, True)
    assert interval.unhealthy_ms == 2000 and healed.error_since_ms is None  # [1000, 3000): the SLA's
    _, later = deltas.step(healed, 4000, reading(700), 30_000)
    assert later.unhealthy_ms == 0


def test_gap_over_limit_is_unmetered():
    cursor, _ = deltas.step(None, 0, reading(0), 30_000)
    _, interval = deltas.step(cursor, 40_000, reading(9_999), 30_000)
    assert not interval.metered and interval.energy_mj == 0 and interval.end_ms - interval.start_ms == 40_000


def test_busy_remainder_is_carried_so_sub_second_intervals_lose_no_ms():
    # 250 ms at 33 %: 82.5 busy ms each; floored one by one, 1000 of them gave 82,000 (0.6 % low)
    cursor, _ = deltas.step(None, 0, reading(0, util=33), 30_000)
    busy = []
    for i in range(1, 1001):
        cursor, interval = deltas.step(cursor, i * 250, reading(i, util=33), 30_000)
        busy.append(interval.busy_ms)
    assert busy[:4] == [82, 83, 82, 83] and sum(busy) == 82_500
    assert cursor.busy_rem_pct_ms == 0
    # what is left over waits in the cursor: across an error, a reading without utilization, a gap
    cursor, interval = deltas.step(cursor, 250_250, reading(1001, util=1), 30_000)
    assert (interval.busy_ms, cursor.busy_rem_pct_ms) == (2, 50)
    same, _ = deltas.step(cursor, 250_300, reading(None, error="NVML_ERROR_TIMEOUT"), 30_000)
    cursor, interval = deltas.step(same, 250_400, reading(1002, util=None), 30_000)
    assert (interval.busy_ms, cursor.busy_rem_pct_ms) == (0, 50)
    cursor, interval = deltas.step(cursor, 300_000, reading(1003, util=50), 30_000)  # a gap: unmetered
    assert (interval.metered, interval.busy_ms, cursor.busy_rem_pct_ms) == (False, 0, 50)
    cursor, interval = deltas.step(cursor, 300_001, reading(1004, util=50), 30_000)
    assert (interval.busy_ms, cursor.busy_rem_pct_ms) == (1, 0)


def test_a_cursor_saved_before_the_busy_remainder_loads_with_none_carried():
    """Changelog state written by an older worker has [ts, energy, power] cursors."""
    samples, backend = simulated_samples("n1", gpus=1, ticks=5, util=33, interval_ms=250)
    rollup = NodeRollup(RollupConfig(lateness_ms=0), LeaseIndex())
    state = new_state("n1")
    for offset, sample in enumerate(samples[:2]):
        rollup.apply(state, sample, offset)
    gpu = state["gpus"][backend.uuids[0]]
    assert gpu["cursor"][3] == 50  # 250 ms x 33 % = 82.5 busy ms: 82 counted, 50 %·ms carried
    gpu["cursor"] = gpu["cursor"][:3]  # as an older worker wrote it
    old = json.loads(json.dumps(state))
    for offset, sample in enumerate(samples[2:], 2):
        rollup.apply(old, sample, offset)
    records = rollup.flush(old)
    # carrying starts again from 0: 82 | 82, 83, 82 (the old 50 %·ms is not invented); exact would be 330
    assert sum(r.busy_gpu_ms for r in records) == 82 + 82 + 83 + 82
    assert old["gpus"][backend.uuids[0]]["cursor"][3] == 50


def test_shares_add_up_exactly_whatever_the_cuts():
    points = cut_points(999, 130_001, 60_000, [61_234, 70_000])
    assert points == [999, 60_000, 61_234, 70_000, 120_000, 130_001]
    parts = [share(1_000_003, a, b, 999, 130_001) for a, b in zip(points, points[1:])]
    assert sum(parts) == 1_000_003


def test_windows_and_calendar_checks():
    with pytest.raises(ConfigError):
        check_window(7_000)
    cal = ValleyHours.parse("0-6,22-24")
    assert cal.period(T0) == "valley" and cal.period(T0 + 12 * 3_600_000) == "peak"
    assert cal.period(T0 + 23 * 3_600_000) == "valley"
    with pytest.raises(ConfigError):
        ValleyHours.parse("5-30")


def test_lease_index_lookup_and_boundaries():
    index = LeaseIndex()
    index.put(GpuLeaseTimeline("g", [Lease("b", "t2", "g", 200, None), Lease("a", "t1", "g", 100, 150)]))
    assert index.lease_at("g", 99) is None
    assert index.lease_at("g", 100).tenant_id == "t1"
    assert index.lease_at("g", 150) is None
    assert index.lease_at("g", 10_000).tenant_id == "t2"
    assert index.boundaries("g", 0, 300) == [100, 150, 200]


def brute_force_boundaries(leases: list[Lease], start_ms: int, end_ms: int) -> list[int]:
    """The former linear scan from the start of the history: the reference."""
    points: list[int] = []
    for lease in sorted(leases, key=lambda lease: lease.start_ms):
        if lease.start_ms >= end_ms:
            break
        for point in (lease.start_ms, lease.end_ms):
            if point is not None and start_ms < point < end_ms:
                points.append(point)
    return points


@st.composite
def timeline_and_intervals(draw):
    """A non-overlapping timeline (gaps of 0 allowed: back-to-back leases; the last may be
    open) and intervals around, across and inside it."""
    leases, at = [], draw(st.integers(0, 50))
    for i in range(draw(st.integers(0, 30))):
        at += draw(st.integers(0, 40))
        length = draw(st.integers(1, 60))
        leases.append(Lease(f"l{i}", "t", "g", at, at + length))
        at += length
    if leases and draw(st.booleans()):
        last = leases[-1]
        leases[-1] = Lease(last.lease_id, "t", "g", last.start_ms, None)
    intervals = draw(st.lists(st.tuples(st.integers(-10, at + 80), st.integers(0, 200)), min_size=1, max_size=20))
    return leases, [(start, start + length) for start, length in intervals]


@settings(max_examples=300, deadline=None)
@given(timeline_and_intervals())
def test_lease_index_boundaries_match_a_brute_force_scan(case):
    leases, intervals = case
    index = LeaseIndex()
    index.put(GpuLeaseTimeline("g", list(reversed(leases))))
    for start, end in intervals:
        assert index.boundaries("g", start, end) == brute_force_boundaries(leases, start, end)
        for ts in (start, end, (start + end) // 2):
            assert index.lease_at("g", ts) == next((lease for lease in leases if lease.covers(ts)), None)
    assert index.boundaries("other", 0, 10**6) == []


def test_lease_index_overlapping_input_still_matches_the_scan():
    """put() does not validate; overlapping leases (ends out of order) fall back to the scan."""
    leases = [Lease("a", "t", "g", 0, 100), Lease("b", "t", "g", 10, 20), Lease("c", "t", "g", 30, None)]
    index = LeaseIndex()
    index.put(GpuLeaseTimeline("g", leases))
    for start, end in [(0, 200), (15, 40), (25, 101), (50, 60)]:
        assert index.boundaries("g", start, end) == brute_force_boundaries(leases, start, end)


def test_dedupe_high_water_mark_and_missing():
    state: dict = {}
    assert not seen_before(state, "b1", 0)
    assert not seen_before(state, "b1", 3)  # 1 and 2 skipped
    assert seen_before(state, "b1", 3)
    assert not seen_before(state, "b1", 1)
    assert seen_before(state, "b1", 1)
    assert not seen_before(state, "b2", 0)  # a new boot starts over


def test_rollup_hand_computed_split_at_lease_and_windows():
    """2 GPUs at 50 % (385 W) for 120 s; GPU 0 leased to acme from 30 s to 90 s."""
    samples, backend = simulated_samples("n1", gpus=2, ticks=121)
    index = LeaseIndex()
    gpu0 = backend.uuids[0]
    index.put(GpuLeaseTimeline(gpu0, [Lease("L1", "acme", gpu0, T0 + 30_000, T0 + 90_000)]))
    rollup = NodeRollup(RollupConfig(lateness_ms=0), index)
    state = new_state("n1")
    records = [r for offset, s in enumerate(samples) for r in rollup.apply(state, s, offset).records]
    records += rollup.flush(state)
    acme = [r for r in records if r.tenant_id == "acme"]
    assert [(r.window_start_ms - T0, r.allocated_gpu_ms, r.energy_mj, r.busy_gpu_ms) for r in acme] == [
        (0, 30_000, 11_550_000, 15_000),
        (60_000, 30_000, 11_550_000, 15_000),
    ]
    assert all(r.avg_power_mw == 385_000 and r.peak_power_mw == 385_000 for r in acme)
    assert sum(r.allocated_gpu_ms for r in records) == 2 * 120_000
    assert sum(r.energy_mj for r in records) == 2 * 120 * 385_000
    assert {r.tou_period for r in records} == {"valley"}


def test_rollup_reorder_within_lateness_and_duplicates_give_same_totals():
    samples, _ = simulated_samples("n1", gpus=1, ticks=200, util=None, seed=3)

    def totals(order):
        rollup = NodeRollup(RollupConfig(lateness_ms=10_000), LeaseIndex())
        state = new_state("n1")
        out = []
        for offset, s in order:
            out += rollup.apply(state, s, offset).records
        out += rollup.flush(state)
        return sum(r.energy_mj for r in out), sum(r.allocated_gpu_ms for r in out), sum(r.busy_gpu_ms for r in out)

    in_order = list(enumerate(samples))
    swapped = list(in_order)
    for i in range(0, 190, 7):  # swap neighbours 3 s apart: within the 10 s lateness
        swapped[i], swapped[i + 3] = swapped[i + 3], swapped[i]
    duplicated = [p for pair in zip(in_order, in_order) for p in pair]
    assert totals(in_order) == totals(swapped) == totals(duplicated)
    assert totals(in_order)[1] == 199_000


def test_counter_backwards_without_marker_is_refused_once_then_taken_as_a_reset():
    samples, _ = simulated_samples("n1", gpus=1, ticks=6, util=50)
    rollup = NodeRollup(RollupConfig(lateness_ms=0), LeaseIndex())
    state = new_state("n1")
    for offset, sample in enumerate(samples[:3]):
        assert rollup.apply(state, sample, offset).rejected is None
    corrupt = samples[3]
    corrupt.gpus[0].energy_mj = 7  # far below, no counter_reset marker
    outcome = rollup.apply(state, corrupt, 3)
    assert outcome.rejected and "went backwards without a reset marker" in outcome.rejected
    assert rollup.apply(state, samples[4], 4).rejected is None  # the next good reading is fine
    # a real but unmarked restart: two readings in a row below the newest
    restarted = simulated_samples("n1", gpus=1, ticks=8, util=50)[0][6:]
    for sample in restarted:
        sample.gpus[0].energy_mj = 1 + sample.seq
    assert rollup.apply(state, restarted[0], 6).rejected
    assert rollup.apply(state, restarted[1], 7).rejected is None


def test_a_silent_gpu_is_closed_and_what_it_sends_later_is_an_adjustment():
    samples, backend = simulated_samples("n1", gpus=1, ticks=100, util=50)
    gpu = backend.uuids[0]
    index = LeaseIndex()
    index.put(GpuLeaseTimeline(gpu, [Lease("L", "acme", gpu, T0, None)]))
    rollup = NodeRollup(RollupConfig(lateness_ms=0, idle_close_ms=120_000), index)
    state = new_state("n1")
    first = [r for i, s in enumerate(samples[:30]) for r in rollup.apply(state, s, i).records]
    assert first == []  # the first window (0-60 s) is still open at 29 s
    state["seen_wall_ms"] = 5_000_000  # when the worker last heard from the node
    assert rollup.close_idle(state, 5_100_000) == []  # silent for 100 s only
    closed = rollup.close_idle(state, 5_121_000)  # silent for 121 s: closed, billed
    assert [(r.kind, r.allocated_gpu_ms, r.record_id.endswith("/L")) for r in closed] == [("usage", 29_000, True)]
    # the host comes back and its spool replays seconds 30..99
    later = [r for i, s in enumerate(samples[30:], 30) for r in rollup.apply(state, s, i).records] + rollup.flush(state)
    adjustment = [r for r in later if r.window_start_ms == T0]
    assert [(r.kind, r.allocated_gpu_ms, r.record_id.endswith("/r1")) for r in adjustment] == [
        ("adjustment", 31_000, True)
    ]
    assert sum(r.allocated_gpu_ms for r in closed + later) == 99_000  # nothing lost, nothing twice
    assert sum(r.energy_mj for r in closed + later) == 99 * 385_000


def test_instants_convert_exactly_up_to_the_bound_and_no_further():
    last = MAX_INSTANT_MS - 1  # 9999-12-31T23:59:59.999Z: a float of seconds would show .998
    assert ms_to_datetime(last).isoformat() == "9999-12-31T23:59:59.999000+00:00"
    assert datetime_to_ms(ms_to_datetime(last)) == last == check_instant_ms(last)
    for bad in (MAX_INSTANT_MS, -1, True, 1.0, "0"):
        with pytest.raises(ValueError):
            check_instant_ms(bad)
