"""GPU leases: which tenant holds which GPU (or MIG instance), from when to when, on which plan.

On `gpu.leases` (compacted) the key is the GPU/MIG uuid and the value is that GPU's
whole lease timeline (`GpuLeaseTimeline`), so compaction keeps exactly the latest
timeline per GPU and a reader that sees one message per GPU knows everything.
"""

from __future__ import annotations

import json
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

    def to_json_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuLeaseTimeline:
        leases = sorted((Lease(**lease) for lease in data.get("leases", [])), key=lambda l: l.start_ms)
        return cls(gpu_uuid=data["gpu_uuid"], leases=leases, schema_version=data.get("schema_version", 1))
