"""A stand-in for the pynvml module, for hosts without a GPU.

`FakeNvml` is a module object (a `types.ModuleType`) carrying pynvml's own error classes
and constants, so `NVMLError(NVML_ERROR_GPU_IS_LOST)` is the same `NVMLError_GpuIsLost`
(with `.value`) the real library raises, and the `NVML_*` names are the real ones. Only
the device calls are faked, with the behaviours that matter: an energy counter that
advances with power and can reset or wrap, devices that get lost and come back, fields
that are unsupported, a driver without the field-values API, MIG instances.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace

import pynvml

GIB = 1024**3
NVMLError = pynvml.NVMLError
for _name in dir(pynvml):
    if _name.startswith(("NVML_", "NVMLError")):
        globals()[_name] = getattr(pynvml, _name)


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power_mw: int = 300_000
    energy_mj: int = 1_000_000
    util: int = 50
    mem_total: int = 80 * GIB
    mem_used: int = 10 * GIB
    temperature: int = 45
    energy_supported: bool = True
    power_field_supported: bool = True  # False: NVML_FI_DEV_POWER_INSTANT unknown to the driver (pre-r535)
    lost_reads: int = 0  # the next N calls on this device raise GPU_IS_LOST
    field_error: int | None = None  # per-field nvmlReturn for every field (e.g. NVML_ERROR_UNKNOWN)
    mig: list[tuple[str, int]] = field(default_factory=list)  # (uuid, memory bytes) per instance


class FakeNvml(ModuleType):
    """Module-like pynvml: pass it as `NvmlBackend(nvml=FakeNvml([...]))`.

    field_values: True, the driver has `nvmlDeviceGetFieldValues`; False, the function
    exists in pynvml but the driver lacks it (FUNCTION_NOT_FOUND, as on old drivers);
    None, the pynvml module has no such function at all.
    """

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu], field_values: bool | None = True, init_error: int | None = None) -> None:
        super().__init__("pynvml", "fake pynvml for tests")
        self.gpus = gpus
        self.initialised = False
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        for name in dir(pynvml):
            if name.startswith(("NVML_", "NVMLError", "c_nvml")):
                setattr(self, name, getattr(pynvml, name))
        if field_values is None:
            self.nvmlDeviceGetFieldValues = None  # type: ignore[assignment]
        elif field_values is False:
            self.nvmlDeviceGetFieldValues = self._no_field_values  # type: ignore[assignment]

    # -- test controls
    def advance(self, ms: int) -> None:
        """`ms` of time pass: every GPU's energy counter grows by its power x time."""
        for gpu in self.gpus:
            gpu.energy_mj += gpu.power_mw * ms // 1000

    def reset_counter(self, index: int, to: int = 0) -> None:
        """A driver reload or GPU reset: the energy counter starts again from `to`."""
        self.gpus[index].energy_mj = to

    def lose(self, index: int, reads: int) -> None:
        """The next `reads` NVML calls on GPU `index` fail with GPU_IS_LOST."""
        self.gpus[index].lost_reads = reads

    # -- helpers
    def _gpu(self, handle) -> FakeGpu:
        gpu = handle if isinstance(handle, FakeGpu) else handle.parent
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if gpu.lost_reads > 0:
            gpu.lost_reads -= 1
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _no_field_values(self, handle, field_ids):
        self.calls["nvmlDeviceGetFieldValues"] += 1
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    # -- the pynvml API used by NvmlBackend
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        if index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(self.gpus[index])

    def nvmlDeviceGetUUID(self, handle) -> str:
        self.calls["nvmlDeviceGetUUID"] += 1
        return handle.uuid

    def nvmlDeviceGetName(self, handle) -> str:
        self.calls["nvmlDeviceGetName"] += 1
        gpu = self._gpu(handle)
        if isinstance(handle, SimpleNamespace):  # a MIG instance: "<GPU name> MIG <n>g.<mem>gb" as NVML names it
            share = max(1, round(7 * handle.memory / gpu.mem_total))
            return f"{gpu.name} MIG {share}g.{handle.memory // GIB}gb"
        return gpu.name

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        self.calls["nvmlDeviceGetPowerUsage"] += 1
        return self._gpu(handle).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        self.calls["nvmlDeviceGetTotalEnergyConsumption"] += 1
        gpu = self._gpu(handle)
        if not gpu.energy_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    def nvmlDeviceGetFieldValues(self, handle, field_ids: list[int]):
        """The real return type: a ctypes array of `c_nvmlFieldValue_t`, one per field,
        each with its own nvmlReturn (power as unsigned int, energy as unsigned long long)."""
        self.calls["nvmlDeviceGetFieldValues"] += 1
        gpu = self._gpu(handle)
        out = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for slot, field_id in zip(out, field_ids):
            slot.fieldId = field_id
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT:
                slot.nvmlReturn = pynvml.NVML_SUCCESS if gpu.power_field_supported else pynvml.NVML_ERROR_NOT_SUPPORTED
                slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                slot.value.uiVal = gpu.power_mw
            elif field_id == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
                slot.nvmlReturn = pynvml.NVML_SUCCESS if gpu.energy_supported else pynvml.NVML_ERROR_NOT_SUPPORTED
                slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                slot.value.ullVal = gpu.energy_mj
            else:
                slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            if gpu.field_error is not None:
                slot.nvmlReturn = gpu.field_error
        return out

    def nvmlDeviceGetUtilizationRates(self, handle):
        self.calls["nvmlDeviceGetUtilizationRates"] += 1
        if isinstance(handle, SimpleNamespace):  # NVML has no per-MIG-instance utilization
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        gpu = self._gpu(handle)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.util, memory=gpu.util // 2)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.calls["nvmlDeviceGetMemoryInfo"] += 1
        gpu = self._gpu(handle)
        if isinstance(handle, SimpleNamespace):  # a MIG instance
            return pynvml.c_nvmlMemory_t(total=handle.memory, free=handle.memory * 3 // 4, used=handle.memory // 4)
        return pynvml.c_nvmlMemory_t(total=gpu.mem_total, free=gpu.mem_total - gpu.mem_used, used=gpu.mem_used)

    def nvmlDeviceGetTemperature(self, handle, sensor: int) -> int:
        self.calls["nvmlDeviceGetTemperature"] += 1
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle).temperature

    def nvmlDeviceGetMigMode(self, handle):
        gpu = self._gpu(handle)
        if not gpu.mig:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle) -> int:
        self._gpu(handle)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index: int):
        gpu = self._gpu(handle)
        if index >= len(gpu.mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        uuid, memory = gpu.mig[index]
        return SimpleNamespace(uuid=uuid, memory=memory, parent=gpu)
