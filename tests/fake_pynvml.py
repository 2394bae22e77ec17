"""A stand-in for the pynvml module, for hosts without a GPU.

It keeps pynvml's own error classes and constants (so `NVMLError(NVML_ERROR_GPU_IS_LOST)`
is the same `NVMLError_GpuIsLost` the real library raises) and fakes only the device
calls, with the behaviours that matter: an energy counter that advances with power and
can reset, devices that get lost and come back, unsupported fields, MIG instances.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml

NVMLError = pynvml.NVMLError
for _name in dir(pynvml):
    if _name.startswith("NVML_"):
        globals()[_name] = getattr(pynvml, _name)


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power_mw: int = 300_000
    energy_mj: int = 1_000_000
    util: int = 50
    mem_total: int = 80 * 1024**3
    mem_used: int = 10 * 1024**3
    temperature: int = 45
    energy_supported: bool = True
    lost_reads: int = 0  # the next N calls on this device raise GPU_IS_LOST
    mig: list[tuple[str, int]] = field(default_factory=list)  # (uuid, memory bytes) per instance


class FakeNvml:
    """Module-like object: pass it as `NvmlBackend(nvml=FakeNvml([...]))`."""

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu], field_values: bool = True) -> None:
        self.gpus = gpus
        self.initialised = False
        for name in dir(pynvml):
            if name.startswith("NVML_"):
                setattr(self, name, getattr(pynvml, name))
        if not field_values:
            self.nvmlDeviceGetFieldValues = None  # type: ignore[assignment]
            del self.nvmlDeviceGetFieldValues

    # -- test controls
    def advance(self, ms: int) -> None:
        for gpu in self.gpus:
            gpu.energy_mj += gpu.power_mw * ms // 1000

    # -- helpers
    def _gpu(self, handle) -> FakeGpu:
        gpu = handle if isinstance(handle, FakeGpu) else handle.parent
        if gpu.lost_reads > 0:
            gpu.lost_reads -= 1
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    # -- the pynvml API used by NvmlBackend
    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(self.gpus[index])

    def nvmlDeviceGetUUID(self, handle) -> str:
        return handle.uuid if isinstance(handle, (FakeGpu, SimpleNamespace)) else str(handle)

    def nvmlDeviceGetName(self, handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        return self._gpu(handle).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        gpu = self._gpu(handle)
        if not gpu.energy_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    def nvmlDeviceGetFieldValues(self, handle, field_ids: list[int]) -> list:
        gpu = self._gpu(handle)
        out = []
        for field_id in field_ids:
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT:
                ok, value = True, gpu.power_mw
            elif field_id == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
                ok, value = gpu.energy_supported, gpu.energy_mj
            else:
                ok, value = False, 0
            out.append(SimpleNamespace(
                fieldId=field_id, nvmlReturn=pynvml.NVML_SUCCESS if ok else pynvml.NVML_ERROR_NOT_SUPPORTED,
                valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, value=SimpleNamespace(ullVal=value)))
        return out

    def nvmlDeviceGetUtilizationRates(self, handle):
        gpu = self._gpu(handle)
        return SimpleNamespace(gpu=gpu.util, memory=gpu.util // 2)

    def nvmlDeviceGetMemoryInfo(self, handle):
        if isinstance(handle, SimpleNamespace):  # a MIG instance
            return SimpleNamespace(total=handle.memory, used=handle.memory // 4, free=handle.memory * 3 // 4)
        gpu = self._gpu(handle)
        return SimpleNamespace(total=gpu.mem_total, used=gpu.mem_used, free=gpu.mem_total - gpu.mem_used)

    def nvmlDeviceGetTemperature(self, handle, sensor: int) -> int:
        return self._gpu(handle).temperature

    def nvmlDeviceGetMigMode(self, handle):
        gpu = self._gpu(handle)
        if not gpu.mig:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index: int):
        gpu = self._gpu(handle)
        if index >= len(gpu.mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        uuid, memory = gpu.mig[index]
        return SimpleNamespace(uuid=uuid, memory=memory, parent=gpu)
