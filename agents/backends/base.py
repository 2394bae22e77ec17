"""The interface every GPU backend (real NVML, simulated, replay) offers the sampler."""

from __future__ import annotations

from typing import Protocol

from schemas.samples import GpuReading


class GpuBackend(Protocol):
    def read(self, wall_ms: int) -> list[GpuReading]:
        """Read every GPU (and MIG instance) now. A failing device is returned with
        `error` set, never raised: one bad GPU must not stop the node's samples."""

    def close(self) -> None: ...
