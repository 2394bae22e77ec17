"""Pure: tumbling windows, time-of-use periods, and exact integer splitting."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.units import MS_PER_DAY, MS_PER_HOUR
from streams.errors import ConfigError


def window_start(ts_ms: int, window_ms: int) -> int:
    """The start of the tumbling window (aligned to the epoch, so to the UTC clock) holding ts."""
    return ts_ms - ts_ms % window_ms


def check_window(window_ms: int) -> None:
    if window_ms <= 0 or MS_PER_DAY % window_ms:
        raise ConfigError(f"window of {window_ms} ms must be positive and divide a day evenly")


def share(total: int, part_start: int, part_end: int, start: int, end: int) -> int:
    """The integer share of `total` spread evenly over [start, end) that falls in
    [part_start, part_end). Floors of a running sum, so the shares of adjacent parts
    add up to `total` exactly, whatever the split."""
    span = end - start
    return total * (part_end - start) // span - total * (part_start - start) // span


def cut_points(start: int, end: int, window_ms: int, extra: list[int]) -> list[int]:
    """Sorted boundaries of [start, end): its ends, every window edge and each `extra`
    point (lease starts and ends) strictly inside it."""
    points = {start, end}
    edge = window_start(start, window_ms) + window_ms
    while edge < end:
        points.add(edge)
        edge += window_ms
    points.update(p for p in extra if start < p < end)
    return sorted(points)


@dataclass(frozen=True)
class ValleyHours:
    """The time-of-use period a usage record is tagged with: which UTC hours are the cheap
    'valley'; the rest is 'peak'. (Billing prices by its own rate-card calendar,
    billing.pricing.calendar.TouCalendar; this is only the record's tag.)

    Whole hours keep every one-minute window inside one period.
    """

    valley_hours: frozenset[int] = frozenset(range(0, 6))

    @classmethod
    def parse(cls, spec: str) -> ValleyHours:
        """'0-6,22-24' -> valley from 00:00 to 06:00 and 22:00 to 24:00 UTC."""
        hours: set[int] = set()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            low, _, high = part.partition("-")
            try:
                first, last = int(low), int(high or int(low) + 1)
            except ValueError:
                raise ConfigError(f"bad valley hours {part!r}: write ranges like 0-6,22-24") from None
            if not 0 <= first < last <= 24:
                raise ConfigError(f"bad valley hours {part!r}: hours run 0..24")
            hours.update(range(first, last))
        return cls(frozenset(hours))

    def period(self, ts_ms: int) -> str:
        return "valley" if (ts_ms % MS_PER_DAY) // MS_PER_HOUR in self.valley_hours else "peak"
