"""The sampling loop: one NodeSample per tick on a fixed, drift-free schedule."""
from __future__ import annotations

import threading
import uuid
from typing import Callable, Protocol

from agents.backends.base import GpuBackend
from agents.clock import Clock
from schemas.samples import NodeSample


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

    def __init__(self, backend: GpuBackend, clock: Clock, node_id: str, interval_ms: int = 1000,
                 boot_id: str | None = None) -> None:
        if interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        self.backend = backend
        self.clock = clock
        self.node_id = node_id
        self.interval_ms = interval_ms
        self.boot_id = boot_id or new_boot_id()
        self.seq = 0

    def tick(self) -> NodeSample:
        """Take one sample now."""
        wall = self.clock.wall_ms()
        sample = NodeSample(
            node_id=self.node_id,
            boot_id=self.boot_id,
            seq=self.seq,
            ts_ms=wall,
            mono_ms=self.clock.mono_ms(),
            interval_ms=self.interval_ms,
            gpus=self.backend.read(wall),
        )
        self.seq += 1
        return sample

    def run(self, sink: SampleSink, ticks: int | None = None, stop: threading.Event | None = None,
            on_sample: Callable[[NodeSample], None] | None = None) -> int:
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
