"""The real NVML backend, through nvidia-ml-py (`import pynvml`).

Per GPU and tick: power (mW) and the cumulative energy counter (mJ) in one
`nvmlDeviceGetFieldValues` call where the driver supports it (else one call each),
utilization, memory and temperature. Static data (uuid, name) is read once per handle.

MIG: with MIG mode enabled on a GPU, each MIG instance is reported under its own uuid
with `parent_uuid` set to the GPU's uuid (the GPU itself is then not reported on its
own). NVML gives memory per instance but no per-instance utilization, power or energy:
utilization is None, and the parent's power and energy counter are shared out in
proportion to each instance's memory size (an approximation: a busy small instance is
under-charged next to an idle large one; documented for customers).

Failures: a device that raises NVMLError (GPU_IS_LOST and the like) is reported with
`error` set to NVML's error string and every other reading None. Its handle is dropped
and re-acquired on the next read, so a GPU that comes back is read again; `read()`
never raises. A cumulative energy counter lower than the last one read for that uuid
(driver reload, GPU reset) is flagged with `counter_reset`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from agents.backends.errors import BackendUnavailable
from schemas.samples import GpuReading

log = logging.getLogger(__name__)

_ERROR_MAX = 1024  # node_sample.v1.json: error maxLength


def _load_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError:
        raise BackendUnavailable("nvidia-ml-py is not installed: pip install 'wattmeter[agent]'") from None
    module: ModuleType = pynvml
    return module


class NvmlBackend:
    """All GPUs NVML sees on this host. `nvml` is the pynvml module (injectable for tests)."""

    def __init__(self, include_mig: bool = True, nvml: Any = None) -> None:
        self.nvml = nvml if nvml is not None else _load_pynvml()
        self.include_mig = include_mig
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML could not start ({exc}): is the NVIDIA driver loaded?") from None
        except OSError as exc:  # some pynvml versions let a missing libnvidia-ml.so through as OSError
            raise BackendUnavailable(f"NVML library not loadable ({exc}): is the NVIDIA driver installed?") from None
        try:
            self.count = self.nvml.nvmlDeviceGetCount()
        except self.nvml.NVMLError as exc:
            self.close()
            raise BackendUnavailable(f"NVML cannot count GPUs ({exc}): is the NVIDIA driver loaded?") from None
        self._handles: dict[int, Any] = {}
        self._static: dict[int, tuple[str, str]] = {}  # index -> (uuid, name), kept across lost handles
        self._mig_names: dict[str, str] = {}  # MIG uuid -> name
        self._last_energy: dict[str, int] = {}
        self._fields_ok = (
            callable(getattr(self.nvml, "nvmlDeviceGetFieldValues", None))
            and hasattr(self.nvml, "NVML_FI_DEV_POWER_INSTANT")
            and hasattr(self.nvml, "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
        )
        for index in range(self.count):
            try:
                self._handle(index)
            except self.nvml.NVMLError as exc:
                log.warning("GPU %d unreadable at start: %s", index, exc)

    # -- helpers

    def _is(self, exc: BaseException, *names: str) -> bool:
        value = getattr(exc, "value", None)
        return any(value == getattr(self.nvml, name, object()) for name in names)

    def _handle(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            self._static[index] = (
                _text(self.nvml.nvmlDeviceGetUUID(handle)),
                _text(self.nvml.nvmlDeviceGetName(handle)),
            )
            self._handles[index] = handle
        return handle

    def _optional(self, call: Callable[..., Any], *args: Any) -> Any:
        """A value NVML may not support on this device: None instead of an error."""
        try:
            return call(*args)
        except self.nvml.NVMLError as exc:
            if self._is(exc, "NVML_ERROR_NOT_SUPPORTED"):
                return None
            raise

    def _power_and_energy(self, handle: Any) -> tuple[int | None, int | None]:
        """Power (mW) and energy counter (mJ): one field-values call, single calls as fallback."""
        nvml = self.nvml
        if self._fields_ok:
            try:
                power_field, energy_field = nvml.nvmlDeviceGetFieldValues(
                    handle, [nvml.NVML_FI_DEV_POWER_INSTANT, nvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION]
                )
            except nvml.NVMLError as exc:
                if not self._is(
                    exc, "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT"
                ):
                    raise
                self._fields_ok = False  # old driver: the single calls from now on
            else:
                power = self._field(power_field, nvml.nvmlDeviceGetPowerUsage, handle)
                energy = self._field(energy_field, nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
                return power, energy
        return (
            self._optional(nvml.nvmlDeviceGetPowerUsage, handle),
            self._optional(nvml.nvmlDeviceGetTotalEnergyConsumption, handle),
        )

    def _field(self, field: Any, fallback: Callable[..., Any], handle: Any) -> int | None:
        """A field value, or else the single call's (a driver may know the call but not the
        field, e.g. POWER_INSTANT before r535); the single call raises the device's real
        error if it has one and gives None where the value is NOT_SUPPORTED."""
        if field.nvmlReturn == self.nvml.NVML_SUCCESS:
            value = _field_value(self.nvml, field)
            if value is not None:
                return value
        single: int | None = self._optional(fallback, handle)
        return single

    # -- reading

    def _read_gpu(self, index: int) -> list[GpuReading]:
        nvml = self.nvml
        handle = self._handle(index)
        uuid, name = self._static[index]
        power, energy = self._power_and_energy(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        temperature = self._optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        if self.include_mig and self._mig_enabled(handle):
            return self._mig_readings(handle, uuid, name, power, energy, temperature)
        util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        return [
            self._with_reset(
                GpuReading(
                    gpu_uuid=uuid,
                    model=name,
                    power_mw=power,
                    energy_mj=energy,
                    util_gpu_pct=util.gpu if util is not None else None,
                    util_mem_pct=util.memory if util is not None else None,
                    mem_used_bytes=memory.used,
                    mem_total_bytes=memory.total,
                    temperature_c=temperature,
                )
            )
        ]

    def _mig_enabled(self, handle: Any) -> bool:
        getter = getattr(self.nvml, "nvmlDeviceGetMigMode", None)
        if getter is None:
            return False  # pynvml older than MIG
        try:
            current, _pending = getter(handle)
        except self.nvml.NVMLError as exc:
            if self._is(
                exc, "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT"
            ):
                return False  # not MIG-capable
            raise
        return bool(current == self.nvml.NVML_DEVICE_MIG_ENABLE)

    def _mig_readings(
        self, handle: Any, parent: str, name: str, power: int | None, energy: int | None, temperature: int | None
    ) -> list[GpuReading]:
        """One reading per MIG instance.

        NVML gives no per-instance utilization (util fields are None) and no per-instance
        power or energy: each instance gets the parent's power and energy counter times
        (instance memory / memory of all instances), floored to integers. This is an
        approximation by size, not a measurement of the instance's own draw.
        """
        nvml = self.nvml
        instances = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError as exc:
                if self._is(exc, "NVML_ERROR_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT"):
                    continue  # empty slot
                raise
            uuid = _text(nvml.nvmlDeviceGetUUID(mig))
            if uuid not in self._mig_names:
                try:
                    self._mig_names[uuid] = _text(nvml.nvmlDeviceGetName(mig))
                except nvml.NVMLError:
                    self._mig_names[uuid] = f"{name} MIG"
            instances.append((uuid, nvml.nvmlDeviceGetMemoryInfo(mig)))
        total_mem = sum(mem.total for _, mem in instances) or 1
        return [
            self._with_reset(
                GpuReading(
                    gpu_uuid=uuid,
                    model=self._mig_names[uuid],
                    parent_uuid=parent,
                    power_mw=power * mem.total // total_mem if power is not None else None,
                    energy_mj=energy * mem.total // total_mem if energy is not None else None,
                    util_gpu_pct=None,
                    util_mem_pct=None,
                    mem_used_bytes=mem.used,
                    mem_total_bytes=mem.total,
                    temperature_c=temperature,
                )
            )
            for uuid, mem in instances
        ]

    def _with_reset(self, reading: GpuReading) -> GpuReading:
        if reading.energy_mj is not None:
            previous = self._last_energy.get(reading.gpu_uuid)
            reading.counter_reset = previous is not None and reading.energy_mj < previous
            self._last_energy[reading.gpu_uuid] = reading.energy_mj
        return reading

    def read(self, wall_ms: int) -> list[GpuReading]:
        """Every GPU (or its MIG instances) now; a failing device comes back with `error` set."""
        readings: list[GpuReading] = []
        for index in range(self.count):
            try:
                readings.extend(self._read_gpu(index))
            except Exception as exc:  # NVMLError above all; nothing may stop the other GPUs
                self._handles.pop(index, None)  # re-acquire next tick
                uuid, name = self._static.get(index, (f"GPU-index-{index}", "unknown"))
                text = str(exc) if isinstance(exc, self.nvml.NVMLError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, self.nvml.NVMLError):
                    log.exception("GPU %d (%s): unexpected error", index, uuid)
                readings.append(GpuReading(gpu_uuid=uuid, model=name, error=text[:_ERROR_MAX]))
        return readings

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # already shut down, or the driver went away
            pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _field_value(nvml: Any, field: Any) -> int | None:
    kind = field.valueType
    if kind == nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
        return int(field.value.ullVal)
    if kind == nvml.NVML_VALUE_TYPE_UNSIGNED_INT:
        return int(field.value.uiVal)
    if kind == getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG", -1):
        return int(field.value.ulVal)
    if kind == getattr(nvml, "NVML_VALUE_TYPE_SIGNED_LONG_LONG", -1):
        return int(field.value.sllVal)
    if kind == getattr(nvml, "NVML_VALUE_TYPE_SIGNED_INT", -1):
        return int(field.value.siVal)
    return None
