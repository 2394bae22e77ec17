"""GPU leases: which tenant holds which GPU (or MIG instance), from when to when, on which plan.

On `gpu.leases` (compacted) the key is the GPU/MIG uuid and the value is that GPU's
lease timeline (`GpuLeaseTimeline`), so compaction keeps exactly the latest timeline per
GPU and a reader that sees one message per GPU knows everything it can still need.

The timeline is trimmed (`trim_timeline`) to what a worker can still need: leases that are
open or end after `now - horizon`. A sample older than the horizon can no longer arrive
(the horizon is longer than the agents' spool age limit), so the dropped leases can never
be looked up again, and a GPU's message stays small whatever its history: a year of hourly
leases is ~1.5 MB of JSON untrimmed (over Kafka's default 1 MiB), a few dozen KiB trimmed.
`complete_from_ms` says from which instant the timeline is exact: None when nothing was
dropped, else the end of the latest dropped lease (look-ups at or after it are exact).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

LEASE_SCHEMA_VERSION = 1
PLANS = ("on_demand", "valley", "interruptible", "reserved")


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: str
    tenant_id: str
    gpu_uuid: str
    start_ms: int  # inclusive
    end_ms: int | None  # exclusive; None while open-ended
    plan: str = "on_demand"

    def covers(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms and (self.end_ms is None or ts_ms < self.end_ms)


@dataclass(slots=True)
class GpuLeaseTimeline:
    gpu_uuid: str
    leases: list[Lease] = field(default_factory=list)
    schema_version: int = LEASE_SCHEMA_VERSION
    # the timeline is exact for instants >= this; None: the whole history is here
    complete_from_ms: int | None = None

    def to_json_bytes(self) -> bytes:
        data = asdict(self)
        if self.complete_from_ms is None:  # untrimmed timelines keep the original, smaller shape
            del data["complete_from_ms"]
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuLeaseTimeline:
        leases = sorted((Lease(**lease) for lease in data.get("leases", [])), key=lambda l: l.start_ms)
        return cls(
            gpu_uuid=data["gpu_uuid"],
            leases=leases,
            schema_version=data.get("schema_version", 1),
            complete_from_ms=data.get("complete_from_ms"),
        )


def trim_timeline(gpu_uuid: str, leases: Iterable[Lease], now_ms: int, horizon_ms: int) -> GpuLeaseTimeline:
    """The timeline a worker can still need at `now_ms`: leases open or ending after
    `now_ms - horizon_ms`, sorted by start; `complete_from_ms` is the latest end among the
    dropped leases (None if none was dropped), so publishing the same leases again gives
    the same bytes until another lease falls behind the horizon."""
    if horizon_ms < 0:
        raise ValueError(f"horizon_ms must be >= 0, got {horizon_ms}")
    cutoff = now_ms - horizon_ms
    kept: list[Lease] = []
    complete_from: int | None = None
    for lease in leases:
        if lease.gpu_uuid != gpu_uuid:
            raise ValueError(f"lease {lease.lease_id} is on GPU {lease.gpu_uuid}, not {gpu_uuid}")
        if lease.end_ms is not None and lease.end_ms <= cutoff:
            complete_from = lease.end_ms if complete_from is None else max(complete_from, lease.end_ms)
        else:
            kept.append(lease)
    kept.sort(key=lambda lease: lease.start_ms)
    return GpuLeaseTimeline(gpu_uuid, kept, complete_from_ms=complete_from)
