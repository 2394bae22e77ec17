"""The NVML backend: against a faithful fake of pynvml here, against the real one where a GPU is."""
from __future__ import annotations

import time

import pytest

from agents.backends.errors import BackendUnavailable
from agents.backends.nvml import NvmlBackend
from tests.fake_pynvml import FakeGpu, FakeNvml

GIB = 1024**3


def two_gpus() -> FakeNvml:
    return FakeNvml([FakeGpu("GPU-0000-a"), FakeGpu("GPU-0000-b", power_mw=600_000, util=90)])


@pytest.mark.parametrize("field_values", [True, False])
def test_reads_power_energy_util_memory_with_or_without_field_values(field_values):
    nvml = FakeNvml([FakeGpu("GPU-0000-a"), FakeGpu("GPU-0000-b", power_mw=600_000, util=90)], field_values)
    backend = NvmlBackend(nvml=nvml)
    first = backend.read(0)
    nvml.advance(1000)
    second = backend.read(1000)
    assert [r.gpu_uuid for r in second] == ["GPU-0000-a", "GPU-0000-b"]
    assert (second[1].power_mw, second[1].util_gpu_pct, second[1].mem_total_bytes) == (600_000, 90, 80 * GIB)
    assert second[1].energy_mj - first[1].energy_mj == 600_000
    assert not any(r.counter_reset or r.error for r in first + second)


def test_a_lost_gpu_is_reported_retried_and_recovers_without_touching_the_others():
    nvml = two_gpus()
    backend = NvmlBackend(nvml=nvml)
    backend.read(0)
    nvml.gpus[0].lost_reads = 2
    lost = backend.read(1000)
    assert lost[0].gpu_uuid == "GPU-0000-a" and "GPU is lost" in lost[0].error and lost[0].power_mw is None
    assert lost[1].error is None and lost[1].power_mw == 600_000
    nvml.advance(2000)
    recovered = backend.read(2000)  # handle re-acquired (that call used up the second lost read) ...
    recovered = backend.read(3000)  # ... and read again
    assert recovered[0].error is None and recovered[0].power_mw == 300_000


def test_counter_reset_is_flagged():
    nvml = two_gpus()
    backend = NvmlBackend(nvml=nvml)
    backend.read(0)
    nvml.gpus[0].energy_mj = 5  # driver reload
    after = backend.read(1000)
    assert after[0].counter_reset and not after[1].counter_reset


def test_unsupported_energy_counter_gives_none():
    nvml = FakeNvml([FakeGpu("GPU-old", energy_supported=False)])
    reading = NvmlBackend(nvml=nvml).read(0)[0]
    assert reading.energy_mj is None and reading.power_mw == 300_000 and reading.error is None


def test_mig_instances_get_their_own_uuid_memory_and_a_share_of_power():
    nvml = FakeNvml([FakeGpu("GPU-mig", power_mw=400_000, energy_mj=8_000,
                             mig=[("MIG-1", 10 * GIB), ("MIG-2", 30 * GIB)])])
    readings = NvmlBackend(nvml=nvml).read(0)
    assert [(r.gpu_uuid, r.parent_uuid, r.util_gpu_pct) for r in readings] == [
        ("MIG-1", "GPU-mig", None), ("MIG-2", "GPU-mig", None)]
    assert [r.power_mw for r in readings] == [100_000, 300_000]
    assert [r.energy_mj for r in readings] == [2_000, 6_000]
    assert [r.mem_total_bytes for r in readings] == [10 * GIB, 30 * GIB]


def test_no_driver_is_a_clear_error():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise self.NVMLError(self.NVML_ERROR_LIBRARY_NOT_FOUND)

    with pytest.raises(BackendUnavailable, match="is the NVIDIA driver loaded"):
        NvmlBackend(nvml=NoDriver([]))


@pytest.fixture
def real_nvml():
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pytest.skip("no NVIDIA GPU/NVML on this machine")
    pynvml.nvmlShutdown()
    return NvmlBackend()


@pytest.mark.gpu
def test_real_gpus_report_power_and_a_rising_energy_counter(real_nvml):
    first = real_nvml.read(0)
    time.sleep(1.0)
    second = real_nvml.read(1000)
    assert first and len(first) == len(second)
    for a, b in zip(first, second):
        assert b.error is None, b.error
        assert b.gpu_uuid.startswith(("GPU-", "MIG-"))
        assert b.power_mw and b.power_mw > 0 and b.mem_total_bytes > 0
        if a.energy_mj is not None:
            assert b.energy_mj >= a.energy_mj
    real_nvml.close()
