"""Pure: who held a GPU when. Looks up leases and the instants where holders change."""

from __future__ import annotations

from bisect import bisect_right

from schemas.leases import GpuLeaseTimeline, Lease


class LeaseIndex:
    """The lease timelines of many GPUs, for point look-ups and interval splitting."""

    def __init__(self) -> None:
        self._by_gpu: dict[str, list[Lease]] = {}
        self._starts: dict[str, list[int]] = {}

    def put(self, timeline: GpuLeaseTimeline) -> None:
        leases = sorted(timeline.leases, key=lambda lease: lease.start_ms)
        self._by_gpu[timeline.gpu_uuid] = leases
        self._starts[timeline.gpu_uuid] = [lease.start_ms for lease in leases]

    def forget(self, gpu_uuid: str) -> None:
        self._by_gpu.pop(gpu_uuid, None)
        self._starts.pop(gpu_uuid, None)

    def __len__(self) -> int:
        return len(self._by_gpu)

    def lease_at(self, gpu_uuid: str, ts_ms: int) -> Lease | None:
        """The lease covering ts (start inclusive, end exclusive), or None: idle capacity."""
        starts = self._starts.get(gpu_uuid)
        if not starts:
            return None
        index = bisect_right(starts, ts_ms) - 1
        if index < 0:
            return None
        lease = self._by_gpu[gpu_uuid][index]
        return lease if lease.covers(ts_ms) else None

    def boundaries(self, gpu_uuid: str, start_ms: int, end_ms: int) -> list[int]:
        """Lease starts and ends strictly inside (start, end)."""
        points: list[int] = []
        for lease in self._by_gpu.get(gpu_uuid, ()):
            if lease.start_ms >= end_ms:
                break
            for point in (lease.start_ms, lease.end_ms):
                if point is not None and start_ms < point < end_ms:
                    points.append(point)
        return points
