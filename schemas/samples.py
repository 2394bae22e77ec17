"""The node sample: one message on `gpu.samples` per node per tick, keyed by node_id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

SAMPLE_SCHEMA_VERSION = 1


@dataclass(slots=True)
class GpuReading:
    """One GPU's (or MIG instance's) readings at a tick. Integers in mW, mJ, bytes, %."""

    gpu_uuid: str
    model: str
    power_mw: int | None = None
    energy_mj: int | None = None  # NVML's cumulative counter since driver load
    util_gpu_pct: int | None = None  # None on MIG instances: NVML gives no per-instance utilization
    util_mem_pct: int | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    temperature_c: int | None = None
    parent_uuid: str | None = None  # set on MIG instances: the physical GPU's uuid
    counter_reset: bool = False  # the backend saw its energy counter start again (driver reload)
    error: str | None = None  # set when NVML failed for this device at this tick
    hint: str | None = None  # attribution hint from the host (lease file, kubelet pod); leases stay authoritative


@dataclass(slots=True)
class NodeSample:
    """All GPUs of one node at one tick.

    `seq` is monotonic per `boot_id` (one agent start); (node_id, boot_id, seq) is the
    dedupe key. `mono_ms` is the agent's monotonic clock so that a wall-clock step is
    visible as a disagreement between `ts_ms` and `mono_ms` deltas.
    """

    node_id: str
    boot_id: str
    seq: int
    ts_ms: int
    mono_ms: int
    interval_ms: int
    gpus: list[GpuReading] = field(default_factory=list)
    schema_version: int = SAMPLE_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        # hand-rolled rather than dataclasses.asdict: this runs every tick on every host
        return {
            "node_id": self.node_id,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "mono_ms": self.mono_ms,
            "interval_ms": self.interval_ms,
            "gpus": [{name: getattr(gpu, name) for name in GPU_FIELD_NAMES} for gpu in self.gpus],
            "schema_version": self.schema_version,
        }

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeSample:
        """Build from an already-validated dict (see schemas.validate)."""
        gpus = [GpuReading(**g) for g in data.get("gpus", [])]
        fields = {k: v for k, v in data.items() if k != "gpus"}
        return cls(gpus=gpus, **fields)


GPU_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(GpuReading))
