"""The sampling loop: one NodeSample per tick on a fixed, drift-free schedule."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from agents.backends.base import GpuBackend
from agents.clock import Clock
from schemas.samples import NodeSample
from schemas.units import MS_PER_SECOND
from schemas.validate import MAX_INTERVAL_MS

log = logging.getLogger(__name__)


class SampleSink(Protocol):
    def send(self, sample: NodeSample) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def new_boot_id() -> str:
    """A fresh id per agent start: seq restarts at 0 under it."""
    return uuid.uuid4().hex


class Sampler:
    """Reads the backend each tick and numbers the samples.

    Ticks are scheduled on the monotonic clock at start + k * interval, so a slow
    read does not push later ticks back (no drift); a tick that is already past is
    taken at once, and ticks missed entirely are skipped, not bunched up.
    """

    def __init__(
        self, backend: GpuBackend, clock: Clock, node_id: str, interval_ms: int = 1000, boot_id: str | None = None
    ) -> None:
        if interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        self.backend = backend
        self.clock = clock
        self.node_id = node_id
        self.interval_ms = interval_ms
        self.boot_id = boot_id or new_boot_id()
        self.seq = 0
        self.clock_steps = 0
        self._last_times: tuple[int, int] | None = None

    def _check_clock(self, wall: int, mono: int) -> None:
        """Count a wall-clock step (NTP slew beyond half an interval, a manual date change):
        the sample still carries both clocks, so downstream sees the disagreement too."""
        if self._last_times is not None:
            skew = (wall - self._last_times[0]) - (mono - self._last_times[1])
            if abs(skew) > max(self.interval_ms // 2, 250):
                self.clock_steps += 1
                log.warning("wall clock stepped by %+d ms against the monotonic clock (seq %d)", skew, self.seq)
        self._last_times = (wall, mono)

    def tick(self, interval_ms: int | None = None) -> NodeSample:
        """Take one sample now; `interval_ms` overrides the configured interval it reports
        (a replay reports the recorded cadence)."""
        wall = self.clock.wall_ms()
        mono = self.clock.mono_ms()
        self._check_clock(wall, mono)
        sample = NodeSample(
            node_id=self.node_id,
            boot_id=self.boot_id,
            seq=self.seq,
            ts_ms=wall,
            mono_ms=mono,
            interval_ms=self.interval_ms if interval_ms is None else interval_ms,
            gpus=self.backend.read(wall),
        )
        self.seq += 1
        return sample

    def run(
        self,
        sink: SampleSink,
        ticks: int | None = None,
        stop: threading.Event | None = None,
        on_sample: Callable[[NodeSample], None] | None = None,
    ) -> int:
        """Sample into `sink` until `ticks` were taken or `stop` is set; returns ticks taken."""
        start = self.clock.mono_ms()
        taken = 0
        k = 0
        while (ticks is None or taken < ticks) and not (stop is not None and stop.is_set()):
            due = start + k * self.interval_ms
            self.clock.sleep_until_mono(due)
            if stop is not None and stop.is_set():
                break
            sample = self.tick()
            sink.send(sample)
            if on_sample is not None:
                on_sample(sample)
            taken += 1
            now = self.clock.mono_ms()
            k = max(k + 1, (now - start) // self.interval_ms + (1 if (now - start) % self.interval_ms else 0))
        return taken

    def replay(
        self,
        sink: SampleSink,
        timestamps: list[int],
        speed: float = 1.0,
        stop: threading.Event | None = None,
        ticks: int | None = None,
        on_sample: Callable[[NodeSample], None] | None = None,
    ) -> int:
        """Take one sample per recorded timestamp (a replay backend's trace), stamped with
        the recorded time, waiting (gap / speed) of real time between them (speed 0: no wait).
        Each sample's `interval_ms` is the recorded time since the previous one (the first:
        until the next one; the configured interval when there is only one), 1 ms at least."""
        if not timestamps:
            return 0
        from agents.clock import SimulatedClock

        self.clock = SimulatedClock(timestamps[0])
        start_mono = self.clock.mono_ms()
        taken = 0
        previous = timestamps[0]
        first_interval = timestamps[1] - timestamps[0] if len(timestamps) > 1 else self.interval_ms
        for i, ts in enumerate(timestamps[: ticks if ticks is not None else None]):
            if speed > 0 and ts > previous:
                if stop is not None:
                    if stop.wait((ts - previous) / MS_PER_SECOND / speed):
                        break
                else:
                    time.sleep((ts - previous) / MS_PER_SECOND / speed)
            if stop is not None and stop.is_set():
                break
            previous = ts
            self.clock.sleep_until_mono(start_mono + ts - timestamps[0])
            interval = ts - timestamps[i - 1] if i else first_interval
            sample = self.tick(min(max(interval, 1), MAX_INTERVAL_MS))
            sink.send(sample)
            if on_sample is not None:
                on_sample(sample)
            taken += 1
        return taken
