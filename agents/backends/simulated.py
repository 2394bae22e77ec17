"""A simulated NVML: deterministic from a seed, counters that behave like NVML's.

Each GPU follows a seeded sequence of busy and idle phases; power follows
utilization between the model's idle and busy draw; the cumulative energy counter
integrates power exactly (sub-mJ remainders are carried, as the hardware does) and
starts again from zero on an injected driver reload. Errors can be injected per GPU
for a number of reads, as NVML_ERROR_GPU_IS_LOST or similar would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from schemas.samples import GpuReading

GIB = 1024**3


@dataclass(frozen=True)
class GpuModel:
    name: str
    idle_mw: int
    busy_mw: int
    mem_total_bytes: int


MODELS: dict[str, GpuModel] = {
    "H100": GpuModel("NVIDIA H100 80GB HBM3", 70_000, 700_000, 80 * GIB),
    "A100": GpuModel("NVIDIA A100-SXM4-80GB", 55_000, 400_000, 80 * GIB),
    "L40S": GpuModel("NVIDIA L40S", 35_000, 350_000, 48 * GIB),
}


@dataclass
class _SimGpu:
    uuid: str
    model: GpuModel
    rng: random.Random
    constant_util: int | None
    energy_uj: int = 0  # micro-joules, so integration is exact; NVML reports mJ
    last_wall_ms: int | None = None
    last_power_mw: int = 0
    util: int = 0
    phase_left_ms: int = 0
    reset_pending: bool = False
    errors_left: int = 0
    error_text: str = "NVML_ERROR_GPU_IS_LOST"
    mig_instances: list[str] = field(default_factory=list)


class SimulatedBackend:
    """`gpus` simulated devices of `model`; `constant_util` pins utilization for
    hand-computable loads (power is then exactly idle + (busy-idle) * util / 100)."""

    def __init__(
        self,
        gpus: int = 8,
        model: str = "H100",
        seed: int = 0,
        node_id: str = "node",
        constant_util: int | None = None,
        mig_per_gpu: int = 0,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown simulated model {model!r}; choose one of {', '.join(MODELS)}")
        self._gpus = [
            _SimGpu(
                uuid=f"GPU-sim-{node_id}-{index:02d}",
                model=MODELS[model],
                rng=random.Random(f"{seed}:{node_id}:{index}"),
                constant_util=constant_util,
                mig_instances=[f"MIG-sim-{node_id}-{index:02d}-{m}" for m in range(mig_per_gpu)],
            )
            for index in range(gpus)
        ]

    @property
    def uuids(self) -> list[str]:
        return [gpu.uuid for gpu in self._gpus]

    def inject_error(self, index: int, reads: int, text: str = "NVML_ERROR_GPU_IS_LOST") -> None:
        """The next `reads` reads of GPU `index` fail with `text`."""
        self._gpus[index].errors_left = reads
        self._gpus[index].error_text = text

    def reload_driver(self, index: int) -> None:
        """Reset GPU `index`'s energy counter to zero, as a driver reload does."""
        self._gpus[index].energy_uj = 0
        self._gpus[index].reset_pending = True

    def _power_mw(self, gpu: _SimGpu) -> int:
        return gpu.model.idle_mw + (gpu.model.busy_mw - gpu.model.idle_mw) * gpu.util // 100

    def _advance(self, gpu: _SimGpu, wall_ms: int) -> None:
        if gpu.last_wall_ms is not None and wall_ms > gpu.last_wall_ms:
            elapsed = wall_ms - gpu.last_wall_ms
            gpu.energy_uj += gpu.last_power_mw * elapsed  # mW x ms = uJ
            gpu.phase_left_ms -= elapsed
        gpu.last_wall_ms = wall_ms
        if gpu.constant_util is not None:
            gpu.util = gpu.constant_util
        elif gpu.phase_left_ms <= 0:
            busy = gpu.rng.random() < 0.7
            gpu.util = gpu.rng.randint(60, 100) if busy else gpu.rng.randint(0, 5)
            gpu.phase_left_ms = gpu.rng.randint(20, 600) * 1000
        gpu.last_power_mw = self._power_mw(gpu)

    def read(self, wall_ms: int) -> list[GpuReading]:
        readings: list[GpuReading] = []
        for gpu in self._gpus:
            self._advance(gpu, wall_ms)
            if gpu.errors_left > 0:
                gpu.errors_left -= 1
                readings.append(GpuReading(gpu_uuid=gpu.uuid, model=gpu.model.name, error=gpu.error_text))
                continue
            mem_used = gpu.model.mem_total_bytes * gpu.util // 100
            reading = GpuReading(
                gpu_uuid=gpu.uuid,
                model=gpu.model.name,
                power_mw=gpu.last_power_mw,
                energy_mj=gpu.energy_uj // 1000,
                util_gpu_pct=gpu.util,
                util_mem_pct=gpu.util // 2,
                mem_used_bytes=mem_used,
                mem_total_bytes=gpu.model.mem_total_bytes,
                temperature_c=30 + gpu.util // 2,
                counter_reset=gpu.reset_pending,
            )
            gpu.reset_pending = False
            if gpu.mig_instances:
                readings.extend(self._mig_readings(gpu, reading))
            else:
                readings.append(reading)
        return readings

    def _mig_readings(self, gpu: _SimGpu, parent: GpuReading) -> list[GpuReading]:
        """MIG instances: NVML gives memory per instance but no utilization or power;
        the parent's power and energy are shared out evenly (documented approximation)."""
        count = len(gpu.mig_instances)
        return [
            GpuReading(
                gpu_uuid=uuid,
                model=f"{gpu.model.name} MIG 1/{count}",
                power_mw=parent.power_mw // count if parent.power_mw is not None else None,
                energy_mj=parent.energy_mj // count if parent.energy_mj is not None else None,
                util_gpu_pct=None,
                util_mem_pct=None,
                mem_used_bytes=(parent.mem_used_bytes or 0) // count,
                mem_total_bytes=gpu.model.mem_total_bytes // count,
                temperature_c=parent.temperature_c,
                parent_uuid=gpu.uuid,
                counter_reset=parent.counter_reset,
            )
            for uuid in gpu.mig_instances
        ]

    def close(self) -> None:
        return None
