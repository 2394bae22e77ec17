"""The replay backend: nvidia-smi CSV traces, energy by trapezoid integration, bad rows."""
from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agents.backends.errors import TraceError
from agents.backends.replay import ReplayBackend
from agents.config import AgentConfig
from agents.daemon import AgentDaemon

SMI_HEADER = ("timestamp, uuid, name, power.draw [W], utilization.gpu [%], utilization.memory [%], "
              "memory.used [MiB], memory.total [MiB], temperature.gpu")
GPUS = ("GPU-6a0a3b1e-0000-0000-0000-000000000001", "GPU-6a0a3b1e-0000-0000-0000-000000000002")


def write_smi_trace(path: Path, ticks: int = 150, seed: int = 4) -> dict[str, float]:
    """An nvidia-smi CSV of 2 GPUs at ~1 s with jitter; returns each GPU's trapezoid energy in mJ (floats)."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 2, 10, 15, 1, 123000)
    lines = [SMI_HEADER]
    last: dict[str, tuple[datetime, float]] = {}
    energy = {g: 0.0 for g in GPUS}
    t = start
    for _ in range(ticks):
        for offset_ms, gpu in enumerate(GPUS):
            stamp = t + timedelta(milliseconds=offset_ms * 3)
            watts = round(rng.uniform(60, 700), 2)
            util = rng.randint(0, 100)
            lines.append(f"{stamp:%Y/%m/%d %H:%M:%S}.{stamp.microsecond // 1000:03d}, {gpu}, NVIDIA H100 80GB HBM3, "
                         f"{watts:.2f} W, {util} %, {util // 2} %, 1024 MiB, 81559 MiB, 40")
            if gpu in last:
                seconds = (stamp - last[gpu][0]).total_seconds()
                energy[gpu] += (last[gpu][1] + watts) / 2 * seconds * 1000
            last[gpu] = (stamp, watts)
        t += timedelta(milliseconds=1000 + rng.randint(-20, 20))
    path.write_text("\n".join(lines) + "\n")
    return energy


def test_nvidia_smi_trace_energy_is_the_trapezoid_integral(tmp_path: Path):
    expected = write_smi_trace(tmp_path / "smi.csv")
    backend = ReplayBackend(tmp_path / "smi.csv")
    ticks = backend.ticks()
    assert len(ticks) == 150 and all(len(readings) == 2 for _, readings in ticks)
    first = ticks[0][1][0]
    assert (first.power_mw is not None, first.mem_total_bytes, first.model) == (True, 81559 * 1024**2,
                                                                                 "NVIDIA H100 80GB HBM3")
    assert ticks[0][0] == int(datetime(2026, 11, 2, 10, 15, 1, 123000, tzinfo=timezone.utc).timestamp() * 1000)
    final = {r.gpu_uuid: r.energy_mj for r in ticks[-1][1]}
    for gpu in GPUS:
        assert math.isclose(final[gpu], expected[gpu], rel_tol=1e-3)
        assert abs(final[gpu] - expected[gpu]) <= 1  # in fact exact to the mJ


def test_simple_trace_passes_energy_through_and_handles_missing_values(tmp_path: Path):
    trace = tmp_path / "simple.csv"
    trace.write_text("timestamp,gpu_uuid,power_w,util_gpu_pct,energy_mj\n"
                     "2026-11-02T00:00:00Z,GPU-a,100.5,50,1000\n"
                     "2026-11-02T00:00:01Z,GPU-a,[N/A],[N/A],1100\n")
    backend = ReplayBackend(trace)
    first, second = backend.read(0), backend.read(0)
    assert (first[0].power_mw, first[0].energy_mj, first[0].util_gpu_pct) == (100_500, 1000, 50)
    assert (second[0].power_mw, second[0].energy_mj, second[0].util_gpu_pct) == (None, 1100, None)
    assert backend.exhausted and backend.read(0) == []


@pytest.mark.parametrize("body,reason", [
    ("timestamp,gpu_uuid,power_w\n2026-11-02T00:00:00Z,GPU-a,lots\n", r"simple.csv:2: cannot read this row"),
    ("timestamp,gpu_uuid,power_w\nyesterday,GPU-a,100\n", r"simple.csv:2: cannot read this row"),
    ("timestamp,gpu_uuid\n", r"header has no power column"),
    ("timestamp,gpu_uuid,power_w\n2026-11-02T00:00:00Z,GPU-a\n", r"simple.csv:2: 2 values"),
])
def test_bad_traces_name_file_line_and_problem(tmp_path: Path, body: str, reason: str):
    trace = tmp_path / "simple.csv"
    trace.write_text(body)
    with pytest.raises(TraceError, match=reason):
        ReplayBackend(trace)


@pytest.mark.broker
def test_replayed_trace_energy_in_kafka_matches_the_trapezoid(kafka_broker, run_id, tmp_path: Path):
    from tests.test_agent_kafka import node_samples

    expected = write_smi_trace(tmp_path / "smi.csv", ticks=300)
    node = f"replay-{run_id}"
    config = AgentConfig(node_id=node, backend="replay", trace=tmp_path / "smi.csv", speed=0,
                         spool_dir=tmp_path / "spool", kafka={"bootstrap_servers": kafka_broker.bootstrap})
    assert AgentDaemon(config).run() == 300
    samples = node_samples(kafka_broker.bootstrap, node, 300)
    assert [s["seq"] for s in samples] == list(range(300))
    for gpu in GPUS:
        counters = [g["energy_mj"] for s in samples for g in s["gpus"] if g["gpu_uuid"] == gpu]
        assert math.isclose(counters[-1] - counters[0], expected[gpu], rel_tol=1e-3)
