"""Clocks the sampling loop reads: the real one, and a simulated one for demos and tests."""

from __future__ import annotations

import time
from typing import Protocol

from schemas.units import MS_PER_SECOND, NS_PER_MS


class Clock(Protocol):
    def wall_ms(self) -> int: ...
    def mono_ms(self) -> int: ...
    def sleep_until_mono(self, mono_ms: int) -> None: ...


class SystemClock:
    """Wall clock from time.time_ns, monotonic from time.monotonic_ns."""

    def wall_ms(self) -> int:
        return time.time_ns() // NS_PER_MS

    def mono_ms(self) -> int:
        return time.monotonic_ns() // NS_PER_MS

    def sleep_until_mono(self, mono_ms: int) -> None:
        delay = (mono_ms - self.mono_ms()) / MS_PER_SECOND
        if delay > 0:
            time.sleep(delay)


class SimulatedClock:
    """A clock that jumps instead of sleeping, so an hour of sampling runs in moments.

    `step_wall(delta_ms)` moves only the wall clock, as NTP stepping a host would.
    """

    def __init__(self, start_wall_ms: int, start_mono_ms: int = 1_000_000) -> None:
        self._wall_offset_ms = start_wall_ms - start_mono_ms
        self._mono_ms = start_mono_ms

    def wall_ms(self) -> int:
        return self._mono_ms + self._wall_offset_ms

    def mono_ms(self) -> int:
        return self._mono_ms

    def sleep_until_mono(self, mono_ms: int) -> None:
        self._mono_ms = max(self._mono_ms, mono_ms)

    def step_wall(self, delta_ms: int) -> None:
        self._wall_offset_ms += delta_ms
