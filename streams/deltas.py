"""Pure: per-GPU counter deltas, with counter resets and gaps.

A sample at `ts` closes the interval [previous ts, ts) of its GPU. The energy of
that interval is the difference of NVML's cumulative counter; across a counter reset
(driver reload, counter going backwards, or a missing counter) it falls back to the
trapezoid of the two power readings over the interval. Busy time is the sample's
utilization (NVML averages it over the last period) times the interval. An interval
longer than `max_gap_ms` is not filled in: it is returned as unmetered time.

A reading with an NVML error leaves the cursor where it was (the next good reading covers the
failed stretch with the counter's exact delta) and marks it: the next interval's `unhealthy_ms`
is the time from the first failed reading to that good one, leased time the SLA counts as
unhealthy although it was metered (docs/market.md).

Busy time is exact over any number of intervals: utilization x duration is in %·ms, and
what a whole ms leaves over (`Cursor.busy_rem_pct_ms`, 0..99) is carried into the GPU's
next interval, as the energy counter carries its sub-interval part. So the busy ms of a
GPU's intervals add up to the floor of the exact integral sum(util x dt) / 100, however
short the intervals (flooring each 250 ms interval on its own lost up to 1 % of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.samples import GpuReading
from schemas.units import UJ_PER_MJ


@dataclass(frozen=True, slots=True)
class Cursor:
    """What a GPU's next sample is measured against."""

    ts_ms: int
    energy_mj: int | None
    power_mw: int | None
    busy_rem_pct_ms: int = 0  # util % x ms not yet a whole busy ms (0..99), carried to the next interval
    error_since_ms: int | None = None  # the first NVML error since this cursor's reading


@dataclass(frozen=True, slots=True)
class Interval:
    start_ms: int
    end_ms: int
    energy_mj: int
    busy_ms: int
    power_mw: int  # the closing sample's reading, for peak power
    metered: bool  # False: a gap longer than the limit, time only
    from_counter: bool  # False when energy came from power x time
    unhealthy_ms: int = 0  # the tail [end - unhealthy_ms, end) the GPU reported NVML errors in


def _fallback_energy(prev: Cursor, reading: GpuReading, duration_ms: int) -> int:
    prev_power = prev.power_mw if prev.power_mw is not None else reading.power_mw or 0
    cur_power = reading.power_mw if reading.power_mw is not None else prev_power
    return (prev_power + cur_power) * duration_ms // (2 * UJ_PER_MJ)  # mean mW x ms = uJ, to mJ


def step(
    prev: Cursor | None, ts_ms: int, reading: GpuReading, max_gap_ms: int
) -> tuple[Cursor | None, Interval | None]:
    """Advance a GPU's cursor by one reading; returns (new cursor, interval or None).

    A reading with an error leaves the cursor where it was, so the next good reading
    covers the failed period with an exact counter delta (the counter kept counting).
    A reading at or before the cursor is stale and changes nothing.
    """
    if reading.error is not None:
        if prev is None or prev.error_since_ms is not None or ts_ms <= prev.ts_ms:
            return prev, None
        return Cursor(prev.ts_ms, prev.energy_mj, prev.power_mw, prev.busy_rem_pct_ms, ts_ms), None
    if prev is None:
        return Cursor(ts_ms, reading.energy_mj, reading.power_mw), None
    duration = ts_ms - prev.ts_ms
    if duration <= 0:
        return prev, None
    if duration > max_gap_ms:
        cursor = Cursor(ts_ms, reading.energy_mj, reading.power_mw, prev.busy_rem_pct_ms)
        return cursor, Interval(prev.ts_ms, ts_ms, 0, 0, reading.power_mw or 0, metered=False, from_counter=False)
    counter_ok = (
        not reading.counter_reset
        and reading.energy_mj is not None
        and prev.energy_mj is not None
        and reading.energy_mj >= prev.energy_mj
    )
    if counter_ok and reading.energy_mj is not None and prev.energy_mj is not None:
        energy = reading.energy_mj - prev.energy_mj
    else:
        energy = _fallback_energy(prev, reading, duration)
    busy_pct_ms = prev.busy_rem_pct_ms + (duration * reading.util_gpu_pct if reading.util_gpu_pct is not None else 0)
    busy, remainder = divmod(busy_pct_ms, 100)
    cursor = Cursor(ts_ms, reading.energy_mj, reading.power_mw, remainder)
    unhealthy = ts_ms - prev.error_since_ms if prev.error_since_ms is not None else 0
    return cursor, Interval(prev.ts_ms, ts_ms, energy, busy, reading.power_mw or 0, True, counter_ok, unhealthy)
