"""The NVML backend: against a faithful fake of pynvml here, against the real one where a GPU is."""

from __future__ import annotations

import time

import pynvml
import pytest

from agents.backends.errors import BackendUnavailable
from agents.backends.nvml import NvmlBackend
from tests.support.fake_pynvml import FakeGpu, FakeNvml

GIB = 1024**3


def two_gpus(**kwargs) -> FakeNvml:
    return FakeNvml([FakeGpu("GPU-0000-a"), FakeGpu("GPU-0000-b", power_mw=600_000, util=90)], **kwargs)


@pytest.mark.parametrize("field_values", [True, False, None], ids=["field-api", "driver-lacks-it", "pynvml-lacks-it"])
def test_reads_power_energy_util_memory_with_or_without_field_values(field_values):
    nvml = two_gpus(field_values=field_values)
    backend = NvmlBackend(nvml=nvml)
    first = backend.read(0)
    nvml.advance(1000)
    second = backend.read(1000)
    assert [r.gpu_uuid for r in second] == ["GPU-0000-a", "GPU-0000-b"]
    b = second[1]
    assert (b.model, b.power_mw, b.util_gpu_pct, b.util_mem_pct) == ("NVIDIA H100 80GB HBM3", 600_000, 90, 45)
    assert (b.mem_used_bytes, b.mem_total_bytes, b.temperature_c) == (10 * GIB, 80 * GIB, 45)
    assert second[1].energy_mj - first[1].energy_mj == 600_000
    assert second[0].energy_mj - first[0].energy_mj == 300_000
    assert not any(r.counter_reset or r.error or r.parent_uuid for r in first + second)
    if field_values:
        # batched: power and energy came from the field-values call, no single calls
        assert nvml.calls["nvmlDeviceGetPowerUsage"] == nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 0
    else:
        assert nvml.calls["nvmlDeviceGetPowerUsage"] == 4 and nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 4
        assert nvml.calls["nvmlDeviceGetFieldValues"] <= 1  # tried once at most, then not again


def test_static_data_is_read_once_per_handle():
    nvml = two_gpus()
    backend = NvmlBackend(nvml=nvml)
    for t in range(5):
        backend.read(t * 1000)
    assert nvml.calls["nvmlDeviceGetUUID"] == 2 and nvml.calls["nvmlDeviceGetName"] == 2
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == 2


def test_a_field_that_fails_falls_back_to_the_single_call():
    nvml = FakeNvml([FakeGpu("GPU-a", field_error=pynvml.NVML_ERROR_UNKNOWN)])
    reading = NvmlBackend(nvml=nvml).read(0)[0]
    assert (reading.power_mw, reading.energy_mj, reading.error) == (300_000, 1_000_000, None)
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1 and nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1


def test_a_driver_without_the_power_field_still_reports_power():
    nvml = FakeNvml([FakeGpu("GPU-a", power_field_supported=False)])
    reading = NvmlBackend(nvml=nvml).read(0)[0]
    assert (reading.power_mw, reading.energy_mj) == (300_000, 1_000_000)
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1 and nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 0


def test_a_lost_gpu_is_reported_retried_and_recovers_without_touching_the_others():
    nvml = two_gpus()
    backend = NvmlBackend(nvml=nvml)
    backend.read(0)
    nvml.lose(0, 2)
    lost = backend.read(1000)
    a = lost[0]
    assert (a.gpu_uuid, a.model, a.error) == ("GPU-0000-a", "NVIDIA H100 80GB HBM3", "GPU is lost")
    assert all(
        getattr(a, name) is None
        for name in (
            "power_mw",
            "energy_mj",
            "util_gpu_pct",
            "util_mem_pct",
            "mem_used_bytes",
            "mem_total_bytes",
            "temperature_c",
        )
    )
    assert lost[1].error is None and lost[1].power_mw == 600_000
    nvml.advance(2000)
    again = backend.read(2000)  # re-acquiring the handle uses up the second lost call: still an error ...
    assert again[0].error == "GPU is lost" and again[1].error is None
    recovered = backend.read(3000)  # ... and then it is read again
    assert recovered[0].error is None and recovered[0].power_mw == 300_000
    assert recovered[0].energy_mj == 1_000_000 + 300_000 * 2 and not recovered[0].counter_reset
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == 2 + 2  # start, then one failed and one good re-acquire


def test_a_gpu_lost_at_start_is_reported_then_read_when_it_comes_back():
    nvml = two_gpus()
    nvml.lose(1, 1)  # fails the handle lookup at start
    backend = NvmlBackend(nvml=nvml)
    readings = backend.read(0)
    assert readings[0].error is None
    assert readings[1].gpu_uuid == "GPU-0000-b" and readings[1].error is None  # re-acquired at the first read


def test_counter_reset_is_flagged_once():
    nvml = two_gpus()
    backend = NvmlBackend(nvml=nvml)
    backend.read(0)
    nvml.reset_counter(0, to=5)  # driver reload
    after = backend.read(1000)
    assert after[0].counter_reset and after[0].energy_mj == 5 and not after[1].counter_reset
    nvml.advance(1000)
    later = backend.read(2000)
    assert not later[0].counter_reset and later[0].energy_mj == 5 + 300_000


def test_unsupported_energy_counter_gives_none():
    for field_values in (True, False):
        nvml = FakeNvml([FakeGpu("GPU-old", energy_supported=False)], field_values=field_values)
        backend = NvmlBackend(nvml=nvml)
        for t in (0, 1000):
            reading = backend.read(t)[0]
            assert reading.energy_mj is None and reading.power_mw == 300_000
            assert reading.error is None and not reading.counter_reset


def test_mig_instances_get_their_own_uuid_memory_and_a_share_of_power():
    nvml = FakeNvml(
        [
            FakeGpu("GPU-mig", power_mw=400_000, energy_mj=8_000, mig=[("MIG-1", 10 * GIB), ("MIG-2", 30 * GIB)]),
            FakeGpu("GPU-plain"),
        ]
    )
    backend = NvmlBackend(nvml=nvml)
    readings = backend.read(0)
    assert [(r.gpu_uuid, r.parent_uuid, r.util_gpu_pct, r.util_mem_pct) for r in readings] == [
        ("MIG-1", "GPU-mig", None, None),
        ("MIG-2", "GPU-mig", None, None),
        ("GPU-plain", None, 50, 25),
    ]
    mig = readings[:2]
    assert [r.power_mw for r in mig] == [100_000, 300_000]
    assert [r.energy_mj for r in mig] == [2_000, 6_000]
    assert [r.mem_total_bytes for r in mig] == [10 * GIB, 30 * GIB]
    assert [r.model for r in mig] == ["NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA H100 80GB HBM3 MIG 3g.30gb"]
    nvml.reset_counter(0)
    after = backend.read(1000)
    assert [r.counter_reset for r in after] == [True, True, False]


def test_mig_can_be_ignored():
    nvml = FakeNvml([FakeGpu("GPU-mig", mig=[("MIG-1", 10 * GIB)])])
    [reading] = NvmlBackend(include_mig=False, nvml=nvml).read(0)
    assert (reading.gpu_uuid, reading.parent_uuid, reading.util_gpu_pct) == ("GPU-mig", None, 50)


def test_a_lost_mig_parent_reports_the_parent_with_its_error():
    nvml = FakeNvml([FakeGpu("GPU-mig", mig=[("MIG-1", 10 * GIB)]), FakeGpu("GPU-plain")])
    backend = NvmlBackend(nvml=nvml)
    backend.read(0)
    nvml.lose(0, 1)
    readings = backend.read(1000)
    assert [(r.gpu_uuid, r.error) for r in readings] == [("GPU-mig", "GPU is lost"), ("GPU-plain", None)]
    assert [r.gpu_uuid for r in backend.read(2000)] == ["MIG-1", "GPU-plain"]


def test_no_driver_is_a_clear_error_with_nvmls_text():
    with pytest.raises(BackendUnavailable, match="NVML Shared Library Not Found.*is the NVIDIA driver loaded"):
        NvmlBackend(nvml=FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))


def test_close_is_safe_twice():
    backend = NvmlBackend(nvml=two_gpus())
    backend.close()
    backend.close()


# -- the real NVML, where there is one


@pytest.fixture
def real_nvml():
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):
        pytest.skip("no NVIDIA GPU/NVML on this machine")
    pynvml.nvmlShutdown()
    backend = NvmlBackend()
    yield backend
    backend.close()


@pytest.mark.gpu
def test_real_gpus_report_power_and_a_rising_energy_counter(real_nvml):
    first = real_nvml.read(0)
    time.sleep(1.0)
    second = real_nvml.read(1000)
    assert first and [r.gpu_uuid for r in first] == [r.gpu_uuid for r in second]
    for a, b in zip(first, second):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert b.gpu_uuid.startswith(("GPU-", "MIG-"))
        assert b.power_mw is not None and b.power_mw > 0
        assert b.mem_total_bytes is not None and b.mem_total_bytes > 0
        if a.energy_mj is not None:
            assert b.energy_mj is not None and b.energy_mj >= a.energy_mj
            assert not b.counter_reset
