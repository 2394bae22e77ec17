"""Usage records: one per (tenant, GPU, window), on `usage.records` and in Parquet."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

USAGE_SCHEMA_VERSION = 2  # 2: unhealthy_ms (version 1 records and files read it as 0)
KIND_USAGE = "usage"  # leased time
KIND_IDLE = "idle"  # time on an unleased GPU (tenant_id is "")
KIND_ADJUSTMENT = "adjustment"  # late data after its window was emitted


@dataclass(slots=True)
class UsageRecord:
    record_id: str  # deterministic: same inputs give the same id, so re-emits are idempotent
    kind: str
    tenant_id: str
    lease_id: str
    plan: str
    node_id: str
    gpu_uuid: str
    model: str
    window_start_ms: int
    window_end_ms: int
    tou_period: str  # "peak" | "valley"
    allocated_gpu_ms: int
    busy_gpu_ms: int
    energy_mj: int
    avg_power_mw: int
    peak_power_mw: int
    sample_count: int
    observed_ms: int  # how much of the window had samples (coverage numerator)
    unmetered_ms: int  # gaps longer than the limit, not filled
    source_partition: int
    source_offset_min: int
    source_offset_max: int
    unhealthy_ms: int = 0  # of allocated_gpu_ms, the time the GPU reported NVML errors in (metered; the SLA's)
    schema_version: int = USAGE_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


USAGE_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))
