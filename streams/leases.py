"""Pure: who held a GPU when. Looks up leases and the instants where holders change.

Both look-ups run once per GPU-sample on the worker's hot path, so neither scans a
GPU's history. A GPU's samples arrive in order, so each GPU remembers where its last
look-up landed and checks that position first (O(1)); only a jump elsewhere costs a
binary search. A GPU with a year of hourly leases (8,760) then costs what one lease does.
Leases of one GPU never overlap (`parse_lease_timeline` refuses it), so sorted by start they
are sorted by end too, and the lease covering an instant is the first one that ends after it, if it has started.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from typing import NamedTuple

from schemas.leases import GpuLeaseTimeline, Lease

_OPEN_END = sys.maxsize  # an open-ended lease's end: after every instant


class _Timeline(NamedTuple):
    leases: list[Lease]  # by start
    starts: list[int]
    ends: list[int]  # in start order; open ends as _OPEN_END
    ordered: bool  # ends sorted too (no overlaps): the fast paths hold


class LeaseIndex:
    """The lease timelines of many GPUs, for point look-ups and interval splitting."""

    def __init__(self) -> None:
        self._gpus: dict[str, _Timeline] = {}
        self._cursor: dict[str, int] = {}  # per GPU: where the last look-up landed in `ends`

    def put(self, timeline: GpuLeaseTimeline) -> None:
        leases = sorted(timeline.leases, key=lambda lease: lease.start_ms)
        ends = [_OPEN_END if lease.end_ms is None else lease.end_ms for lease in leases]
        ordered = all(a <= b for a, b in zip(ends, ends[1:]))
        # one assignment: a reader on another thread sees the old timeline or the new, never a mix
        self._gpus[timeline.gpu_uuid] = _Timeline(leases, [lease.start_ms for lease in leases], ends, ordered)

    def forget(self, gpu_uuid: str) -> None:
        self._gpus.pop(gpu_uuid, None)

    def _first_ending_after(self, gpu_uuid: str, ends: list[int], ts_ms: int) -> int:
        """bisect_right(ends, ts): the first lease that ends after ts; the remembered position
        first, since a GPU's samples arrive in order. A stale position (a new timeline from
        another thread) only fails the check and falls back to the search."""
        index = self._cursor.get(gpu_uuid, 0)
        if (
            index <= len(ends)
            and (index == 0 or ends[index - 1] <= ts_ms)
            and (index == len(ends) or ts_ms < ends[index])
        ):
            return index
        index = bisect_right(ends, ts_ms)
        self._cursor[gpu_uuid] = index
        return index

    def __len__(self) -> int:
        return len(self._gpus)

    def lease_at(self, gpu_uuid: str, ts_ms: int) -> Lease | None:
        """The lease covering ts (start inclusive, end exclusive), or None: idle capacity."""
        timeline = self._gpus.get(gpu_uuid)
        if timeline is None:
            return None
        leases, starts, ends, ordered = timeline
        if ordered:
            index = self._first_ending_after(gpu_uuid, ends, ts_ms)  # the first lease that ends after ts
            if index < len(starts) and starts[index] <= ts_ms:
                return leases[index]
            return None
        index = bisect_right(starts, ts_ms) - 1  # overlapping leases: the latest start at or before ts
        if index >= 0 and ts_ms < ends[index]:
            return leases[index]
        return None

    def boundaries(self, gpu_uuid: str, start_ms: int, end_ms: int) -> list[int]:
        """Lease starts and ends strictly inside (start, end), in lease order (a start that
        equals the previous lease's end appears twice). O(k) in order, O(log n + k) after a jump."""
        timeline = self._gpus.get(gpu_uuid)
        if timeline is None:
            return []
        _, starts, ends, ordered = timeline
        # leases ending by start_ms lie before the interval; with overlaps, scan from the first
        first = self._first_ending_after(gpu_uuid, ends, start_ms) if ordered else 0
        points: list[int] = []
        for index in range(first, len(starts)):
            start = starts[index]
            if start >= end_ms:  # this lease and every later one start after the interval
                break
            if start_ms < start:
                points.append(start)
            end = ends[index]
            if start_ms < end < end_ms:  # an open end (_OPEN_END) never is
                points.append(end)
        return points
