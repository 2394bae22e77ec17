"""The replay backend: nvidia-smi CSV traces, energy by trapezoid integration, bad rows."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agents.backends.errors import TraceError
from agents.backends.replay import ReplayBackend, trapezoid_energy_mj
from agents.config import AgentConfig
from agents.daemon import AgentDaemon

SMI_HEADER = (
    "timestamp, uuid, name, power.draw [W], utilization.gpu [%], utilization.memory [%], "
    "memory.used [MiB], memory.total [MiB], temperature.gpu"
)
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
            lines.append(
                f"{stamp:%Y/%m/%d %H:%M:%S}.{stamp.microsecond // 1000:03d}, {gpu}, NVIDIA H100 80GB HBM3, "
                f"{watts:.2f} W, {util} %, {util // 2} %, 1024 MiB, 81559 MiB, 40"
            )
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
    assert (first.power_mw is not None, first.mem_total_bytes, first.model) == (
        True,
        81559 * 1024**2,
        "NVIDIA H100 80GB HBM3",
    )
    assert ticks[0][0] == int(datetime(2026, 11, 2, 10, 15, 1, 123000, tzinfo=timezone.utc).timestamp() * 1000)
    final = {r.gpu_uuid: r.energy_mj for r in ticks[-1][1]}
    for gpu in GPUS:
        assert math.isclose(final[gpu], expected[gpu], rel_tol=1e-3)
        assert abs(final[gpu] - expected[gpu]) <= 1  # in fact exact to the mJ
    assert trapezoid_energy_mj(tmp_path / "smi.csv") == final
    counters = [[r.energy_mj for r in readings] for _, readings in ticks]
    assert counters[0] == [0, 0]
    assert all(b >= a for earlier, later in zip(counters, counters[1:]) for a, b in zip(earlier, later))
    assert not any(r.counter_reset for _, readings in ticks for r in readings)


def test_integration_is_exact_in_integers(tmp_path: Path):
    # 1 mW and 3 mW alternating, rows 1 ms apart: 2 uJ per interval, never a whole mJ by row ...
    rows = ["timestamp,gpu_uuid,power_w"] + [
        f"{1_800_000_000_000 + i},GPU-a,{0.001 if i % 2 else 0.003}" for i in range(1001)
    ]
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    ticks = ReplayBackend(tmp_path / "tiny.csv").ticks()
    # ... but 1000 intervals of (1 + 3) / 2 mW x 1 ms = 2000 uJ = 2 mJ: no remainder lost
    assert ticks[-1][1][0].energy_mj == 2
    assert [readings[0].energy_mj for _, readings in ticks[:501]][-1] == 1


def test_smi_columns_in_any_order_timezone_and_missing_values(tmp_path: Path):
    trace = tmp_path / "smi.csv"
    trace.write_text(
        "\ufeffuuid, temperature.gpu, power.draw [W], timestamp, memory.total [MiB], utilization.gpu [%]\n"
        "GPU-a, 40, 100.00 W, 2026/11/02 10:00:00.000, 81559 MiB, 10 %\n"
        "GPU-b, [N/A], [Not Supported], 2026/11/02 10:00:00.004, [N/A], [Not Supported]\n"
        "GPU-a, 41, 200.00 W, 2026/11/02 10:00:02.000, 81559 MiB, 20 %\n"
        "GPU-b, 39, 50.00 W, 2026/11/02 10:00:02.004, 81559 MiB, 5 %\n"
    )
    backend = ReplayBackend(trace, speed=2, tz_offset_minutes=60)  # recorded at UTC+01:00
    assert backend.trace_start_ms == int(datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc).timestamp() * 1000)
    first, second = backend.read(0), backend.read(1000)
    a, b = first
    assert (a.gpu_uuid, a.power_mw, a.temperature_c, a.util_gpu_pct, a.energy_mj) == ("GPU-a", 100_000, 40, 10, 0)
    assert (b.gpu_uuid, b.power_mw, b.temperature_c, b.util_gpu_pct, b.mem_total_bytes, b.energy_mj) == (
        "GPU-b",
        None,
        None,
        None,
        None,
        None,
    )
    assert second[0].energy_mj == 300_000  # (100 W + 200 W) / 2 x 2 s
    assert second[1].energy_mj == 0  # first row with power: the counter starts here
    assert backend.exhausted and backend.read(2000) == []
    assert trapezoid_energy_mj(trace) == {"GPU-a": 300_000, "GPU-b": 0}


def test_ticks_group_rows_by_time_even_when_a_gpu_is_missing(tmp_path: Path):
    trace = tmp_path / "simple.csv"
    trace.write_text(
        "timestamp,gpu_uuid,power_w\n"
        "1800000000000,GPU-a,100\n1800000000000,GPU-b,100\n"
        "1800000001000,GPU-b,100\n"  # GPU-a missing at this tick
        "1800000002000,GPU-a,100\n1800000002000,GPU-b,100\n"
    )
    backend = ReplayBackend(trace, speed=0)
    assert [(ts, [r.gpu_uuid for r in readings]) for ts, readings in backend.ticks()] == [
        (1800000000000, ["GPU-a", "GPU-b"]),
        (1800000001000, ["GPU-b"]),
        (1800000002000, ["GPU-a", "GPU-b"]),
    ]
    assert [r.energy_mj for r in backend.ticks()[-1][1]] == [200_000, 200_000]


def test_a_recorded_counter_going_back_is_a_reset(tmp_path: Path):
    trace = tmp_path / "simple.csv"
    trace.write_text(
        "timestamp,gpu_uuid,power_w,util_gpu_pct,energy_mj,model\n"
        "1800000000000,GPU-a,100,5,9000,NVIDIA L40S\n"
        "1800000001000,GPU-a,100,5,10,NVIDIA L40S\n"
        "1800000002000,GPU-a,100,5,110,NVIDIA L40S\n"
    )
    ticks = ReplayBackend(trace).ticks()
    assert [(r.energy_mj, r.counter_reset, r.model) for _, [r] in ticks] == [
        (9000, False, "NVIDIA L40S"),
        (10, True, "NVIDIA L40S"),
        (110, False, "NVIDIA L40S"),
    ]


def test_simple_trace_passes_energy_through_and_handles_missing_values(tmp_path: Path):
    trace = tmp_path / "simple.csv"
    trace.write_text(
        "timestamp,gpu_uuid,power_w,util_gpu_pct,energy_mj\n"
        "2026-11-02T00:00:00Z,GPU-a,100.5,50,1000\n"
        "2026-11-02T00:00:01Z,GPU-a,[N/A],[N/A],1100\n"
    )
    backend = ReplayBackend(trace)
    first, second = backend.read(0), backend.read(0)
    assert (first[0].power_mw, first[0].energy_mj, first[0].util_gpu_pct) == (100_500, 1000, 50)
    assert (second[0].power_mw, second[0].energy_mj, second[0].util_gpu_pct) == (None, 1100, None)
    assert backend.exhausted and backend.read(0) == []


@pytest.mark.parametrize(
    "body,reason",
    [
        ("timestamp,gpu_uuid,power_w\n2026-11-02T00:00:00Z,GPU-a,lots\n", r"simple.csv:2: cannot read this row"),
        ("timestamp,gpu_uuid,power_w\nyesterday,GPU-a,100\n", r"simple.csv:2: cannot read this row"),
        ("timestamp,gpu_uuid\n", r"header has no power column"),
        ("timestamp,gpu_uuid,power_w\n2026-11-02T00:00:00Z,GPU-a\n", r"simple.csv:2: 2 values"),
        (
            "timestamp,gpu_uuid,power_w\n1800000000000,GPU-a,1\n\n1800000000500,GPU-a,1\n1800000000400,GPU-a,1\n",
            r"simple.csv:5: timestamp goes back in time for GPU-a",
        ),
        ("timestamp,gpu_uuid,power_w\n1800000000,GPU-a,1\n", r"simple.csv:2: .*looks like epoch seconds"),
        ("timestamp,gpu_uuid,power_w\n1800000000000,GPU-a,1\n1800000001000,,1\n", r"simple.csv:3: empty GPU id"),
        (
            "timestamp,gpu_uuid,power_w,util_gpu_pct\n1800000000000,GPU-a,1,5 %\n1800000001000,GPU-a,1,lots\n",
            r"simple.csv:3: cannot read this row",
        ),
        ("", r"simple.csv: empty trace"),
    ],
)
def test_bad_traces_name_file_line_and_problem(tmp_path: Path, body: str, reason: str):
    trace = tmp_path / "simple.csv"
    trace.write_text(body)
    with pytest.raises(TraceError, match=reason):
        ReplayBackend(trace)


def test_a_missing_trace_is_a_trace_error(tmp_path: Path):
    with pytest.raises(TraceError, match="cannot open trace"):
        ReplayBackend(tmp_path / "nope.csv")


@pytest.mark.broker
def test_replayed_trace_energy_in_kafka_matches_the_trapezoid(kafka_broker, run_id, tmp_path: Path):
    from tests.test_agent_kafka import node_samples

    expected = write_smi_trace(tmp_path / "smi.csv", ticks=300)
    node = f"replay-{run_id}"
    config = AgentConfig(
        node_id=node,
        backend="replay",
        trace=tmp_path / "smi.csv",
        speed=0,
        spool_dir=tmp_path / "spool",
        kafka={"bootstrap_servers": kafka_broker.bootstrap},
    )
    assert AgentDaemon(config).run() == 300
    samples = node_samples(kafka_broker.bootstrap, node, 300)
    assert [s["seq"] for s in samples] == list(range(300))
    for gpu in GPUS:
        counters = [g["energy_mj"] for s in samples for g in s["gpus"] if g["gpu_uuid"] == gpu]
        assert math.isclose(counters[-1] - counters[0], expected[gpu], rel_tol=1e-3)
