"""A simulated NVML: deterministic from a seed, counters that behave like NVML's.

Each GPU follows a seeded sequence of busy and idle phases (phase k of a GPU is drawn
from its own seeded generator, so the sequence can resume at any phase); power follows
utilization between the model's idle and busy draw; the cumulative energy counter
integrates power exactly (sub-mJ remainders are carried, as the hardware does). Errors
can be injected per GPU for a number of reads, as NVML_ERROR_GPU_IS_LOST or similar would.

Across agent restarts. NVML's counter runs from driver load, not from agent start: an
agent that restarts (or is SIGKILLed) reads on where the counter was, plus what the GPU
drew meanwhile. The simulation keeps that "driver" state in a small JSON file of its own
(`keep_state(path)`; the daemon puts it beside the spool): per GPU the counter, the last
read time and power, and the load phase. Before `read()` returns a reading, the state
after it is written (temp file, then an atomic rename), so a sample is never spooled ahead
of the counter state it came from: after a kill at any point the next agent's counter is
at or above every counter already spooled, and across the downtime the GPU keeps drawing
its last power. The counter restarts from zero, and the first reading after says so with
`counter_reset`, only when the driver "reloads": `reload_driver(i)`, no state file yet (a
first start, or a deleted or unreadable file), or a new host boot (the file records
/proc/sys/kernel/random/boot_id; a reboot reloads the real driver too, which is also why
the file needs no fsync). A reading flagged as a reset stays flagged in the file until the
next read, so a kill between taking and spooling it flags the next agent's first reading
instead (a kill just after spooling it flags one more reading than needed: that interval is
then metered from power rather than the counter; it never goes to the DLQ).

Rejected: a counter that is a pure function of wall time (the integral of a seeded load
from a fixed epoch) needs no file, but integrating a random load up to "now" costs time in
proportion to the history, a reset would still need state, and its power would no longer
be what the sampled readings say between reads.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.samples import GpuReading
from schemas.units import MS_PER_SECOND, UJ_PER_MJ

log = logging.getLogger(__name__)

GIB = 1024**3
STATE_VERSION = 1
HOST_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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

# the part of a GPU's state that a restarted agent reads back
_PERSISTED = ("energy_uj", "last_wall_ms", "last_power_mw", "util", "phase_left_ms", "phase")


@dataclass
class _SimGpu:
    uuid: str
    model: GpuModel
    seed_key: str
    constant_util: int | None
    energy_uj: int = 0  # micro-joules, so integration is exact; NVML reports mJ
    last_wall_ms: int | None = None
    last_power_mw: int = 0
    util: int = 0
    phase_left_ms: int = 0
    phase: int = 0  # phases drawn so far
    reset_pending: bool = False
    errors_left: int = 0
    error_text: str = "NVML_ERROR_GPU_IS_LOST"
    mig_instances: list[str] = field(default_factory=list)

    def next_phase(self) -> None:
        rng = random.Random(f"{self.seed_key}:{self.phase}")
        self.phase += 1
        busy = rng.random() < 0.7
        self.util = rng.randint(60, 100) if busy else rng.randint(0, 5)
        self.phase_left_ms = rng.randint(20, 600) * MS_PER_SECOND


def _host_boot_id() -> str | None:
    try:
        return HOST_BOOT_ID.read_text().strip() or None
    except OSError:
        return None


class SimulatedBackend:
    """`gpus` simulated devices of `model`; `constant_util` pins utilization for
    hand-computable loads (power is then exactly idle + (busy-idle) * util / 100).
    With `state_path` (or `keep_state`) the counters survive restarts, as NVML's do."""

    def __init__(
        self,
        gpus: int = 8,
        model: str = "H100",
        seed: int = 0,
        node_id: str = "node",
        constant_util: int | None = None,
        mig_per_gpu: int = 0,
        state_path: Path | None = None,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown simulated model {model!r}; choose one of {', '.join(MODELS)}")
        self._gpus = [
            _SimGpu(
                uuid=f"GPU-sim-{node_id}-{index:02d}",
                model=MODELS[model],
                seed_key=f"{seed}:{node_id}:{index}",
                constant_util=constant_util,
                mig_instances=[f"MIG-sim-{node_id}-{index:02d}-{m}" for m in range(mig_per_gpu)],
            )
            for index in range(gpus)
        ]
        self.state_path: Path | None = None
        if state_path is not None:
            self.keep_state(state_path)

    @property
    def uuids(self) -> list[str]:
        return [gpu.uuid for gpu in self._gpus]

    # ------------------------------------------------------------------ driver state

    def keep_state(self, path: Path) -> None:
        """Keep the driver state in `path` from now on, resuming from it if it is there."""
        self.state_path = Path(path)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        saved = self._load_state()
        for gpu in self._gpus:
            entry = saved.get(gpu.uuid)
            if entry is None:  # the driver (re)loaded: the counter starts at zero, and says so
                gpu.energy_uj, gpu.last_wall_ms, gpu.reset_pending = 0, None, True
                continue
            for name in _PERSISTED:
                setattr(gpu, name, entry[name])
            gpu.reset_pending = bool(entry.get("reset_pending"))
        self._save_state()

    def _load_state(self) -> dict[str, dict[str, Any]]:
        assert self.state_path is not None
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("simulated GPU state %s unreadable (%s): counters restart from zero", self.state_path, exc)
            return {}
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            log.warning("simulated GPU state %s has an unknown format: counters restart from zero", self.state_path)
            return {}
        if state.get("host_boot_id") != _host_boot_id():
            log.info(
                "simulated GPUs: the host rebooted since %s was written: counters restart from zero", self.state_path
            )
            return {}
        gpus = state.get("gpus")
        if not isinstance(gpus, dict):
            return {}
        return {u: e for u, e in gpus.items() if isinstance(e, dict) and all(k in e for k in _PERSISTED)}

    def _save_state(self, flagged: frozenset[str] = frozenset()) -> None:
        """Write the state (temp file, atomic rename). `flagged`: GPUs whose reading of this
        read carried `counter_reset`; they stay flagged in the file until the next read."""
        if self.state_path is None:
            return
        gpus = {
            gpu.uuid: {name: getattr(gpu, name) for name in _PERSISTED}
            | {"reset_pending": gpu.reset_pending or gpu.uuid in flagged}
            for gpu in self._gpus
        }
        text = json.dumps({"version": STATE_VERSION, "host_boot_id": _host_boot_id(), "gpus": gpus})
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------------ faults

    def inject_error(self, index: int, reads: int, text: str = "NVML_ERROR_GPU_IS_LOST") -> None:
        """The next `reads` reads of GPU `index` fail with `text`."""
        self._gpus[index].errors_left = reads
        self._gpus[index].error_text = text

    def reload_driver(self, index: int) -> None:
        """Reset GPU `index`'s energy counter to zero, as a driver reload does."""
        self._gpus[index].energy_uj = 0
        self._gpus[index].reset_pending = True
        self._save_state()

    # ------------------------------------------------------------------ reading

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
            gpu.next_phase()
        gpu.last_power_mw = self._power_mw(gpu)

    def read(self, wall_ms: int) -> list[GpuReading]:
        readings: list[GpuReading] = []
        flagged: set[str] = set()
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
                energy_mj=gpu.energy_uj // UJ_PER_MJ,
                util_gpu_pct=gpu.util,
                util_mem_pct=gpu.util // 2,
                mem_used_bytes=mem_used,
                mem_total_bytes=gpu.model.mem_total_bytes,
                temperature_c=30 + gpu.util // 2,
                counter_reset=gpu.reset_pending,
            )
            if gpu.reset_pending:
                flagged.add(gpu.uuid)
            gpu.reset_pending = False
            if gpu.mig_instances:
                readings.extend(self._mig_readings(gpu, reading))
            else:
                readings.append(reading)
        self._save_state(frozenset(flagged))  # before the sample can reach the spool
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
