"""The real NVML backend, through nvidia-ml-py (`import pynvml`).

Per GPU and tick: power (mW) and the cumulative energy counter (mJ) in one
`nvmlDeviceGetFieldValues` call where the driver supports it (else one call each),
utilization, memory and temperature. With MIG enabled, each MIG instance is reported
under its own uuid with `parent_uuid` set. NVML has no per-instance utilization or
power: utilization is None, and the parent's power and energy are shared out in
proportion to each instance's memory size (an approximation, marked by the model
name suffix " MIG <n>g"). A device that fails is reported with `error` and is tried
again next tick; the handle is re-acquired, so a GPU that comes back is read again.
"""
from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from agents.backends.errors import BackendUnavailable
from schemas.samples import GpuReading

log = logging.getLogger(__name__)


def _load_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError:
        raise BackendUnavailable("nvidia-ml-py is not installed: pip install 'wattmeter[agent]'") from None
    return pynvml


class NvmlBackend:
    def __init__(self, include_mig: bool = True, nvml: ModuleType | None = None) -> None:
        self.nvml = nvml or _load_pynvml()
        self.include_mig = include_mig
        try:
            self.nvml.nvmlInit()
            self.count = self.nvml.nvmlDeviceGetCount()
        except self.nvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML could not start ({exc}): is the NVIDIA driver loaded?") from None
        self._handles: dict[int, Any] = {}
        self._static: dict[int, tuple[str, str]] = {}  # index -> (uuid, name)
        self._last_energy: dict[str, int] = {}
        self._fields_ok = hasattr(self.nvml, "nvmlDeviceGetFieldValues") and hasattr(
            self.nvml, "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
        for index in range(self.count):
            try:
                self._handle(index)
            except self.nvml.NVMLError as exc:
                log.warning("GPU %d unreadable at start: %s", index, exc)

    def _handle(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            self._static[index] = (_text(self.nvml.nvmlDeviceGetUUID(handle)), _text(self.nvml.nvmlDeviceGetName(handle)))
            self._handles[index] = handle
        return handle

    def _optional(self, call, *args) -> Any:
        """A value NVML may not support on this device: None instead of an error."""
        try:
            return call(*args)
        except self.nvml.NVMLError as exc:
            if getattr(exc, "value", None) == self.nvml.NVML_ERROR_NOT_SUPPORTED:
                return None
            raise

    def _power_and_energy(self, handle: Any) -> tuple[int | None, int | None]:
        nvml = self.nvml
        if self._fields_ok:
            try:
                values = nvml.nvmlDeviceGetFieldValues(handle, [nvml.NVML_FI_DEV_POWER_INSTANT,
                                                                nvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION])
                power, energy = (_field_value(nvml, v) for v in values)
                if power is not None or energy is not None:
                    if power is None:
                        power = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
                    return power, energy
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) != nvml.NVML_ERROR_NOT_SUPPORTED:
                    raise
                self._fields_ok = False  # old driver: use the single calls from now on
        return (self._optional(nvml.nvmlDeviceGetPowerUsage, handle),
                self._optional(nvml.nvmlDeviceGetTotalEnergyConsumption, handle))

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
        return [self._with_reset(GpuReading(
            gpu_uuid=uuid, model=name, power_mw=power, energy_mj=energy,
            util_gpu_pct=util.gpu if util is not None else None,
            util_mem_pct=util.memory if util is not None else None,
            mem_used_bytes=memory.used, mem_total_bytes=memory.total, temperature_c=temperature))]

    def _mig_enabled(self, handle: Any) -> bool:
        try:
            current, _pending = self.nvml.nvmlDeviceGetMigMode(handle)
        except self.nvml.NVMLError:
            return False  # not MIG-capable
        return current == self.nvml.NVML_DEVICE_MIG_ENABLE

    def _mig_readings(self, handle: Any, parent: str, name: str, power: int | None, energy: int | None,
                      temperature: int | None) -> list[GpuReading]:
        nvml = self.nvml
        instances = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_FOUND:
                    continue  # empty slot
                raise
            instances.append((_text(nvml.nvmlDeviceGetUUID(mig)), nvml.nvmlDeviceGetMemoryInfo(mig)))
        total_mem = sum(mem.total for _, mem in instances) or 1
        return [self._with_reset(GpuReading(
            gpu_uuid=uuid, model=f"{name} MIG", parent_uuid=parent,
            power_mw=power * mem.total // total_mem if power is not None else None,
            energy_mj=energy * mem.total // total_mem if energy is not None else None,
            util_gpu_pct=None, util_mem_pct=None,
            mem_used_bytes=mem.used, mem_total_bytes=mem.total, temperature_c=temperature))
            for uuid, mem in instances]

    def _with_reset(self, reading: GpuReading) -> GpuReading:
        if reading.energy_mj is not None:
            previous = self._last_energy.get(reading.gpu_uuid)
            reading.counter_reset = previous is not None and reading.energy_mj < previous
            self._last_energy[reading.gpu_uuid] = reading.energy_mj
        return reading

    def read(self, wall_ms: int) -> list[GpuReading]:
        readings: list[GpuReading] = []
        for index in range(self.count):
            try:
                readings.extend(self._read_gpu(index))
            except self.nvml.NVMLError as exc:
                self._handles.pop(index, None)  # re-acquire next tick
                uuid, name = self._static.get(index, (f"GPU-index-{index}", ""))
                readings.append(GpuReading(gpu_uuid=uuid, model=name, error=f"NVML: {exc}"))
        return readings

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _field_value(nvml: ModuleType, field: Any) -> int | None:
    if field.nvmlReturn != nvml.NVML_SUCCESS:
        return None
    if field.valueType == nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
        return int(field.value.ullVal)
    if field.valueType == nvml.NVML_VALUE_TYPE_UNSIGNED_INT:
        return int(field.value.uiVal)
    if field.valueType == getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG", -1):
        return int(field.value.ulVal)
    return None
