"""The replay backend: nvidia-smi CSV traces, energy by trapezoid integration, bad rows."""

from __future__ import annotations

import json
import logging
import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agents.backends.errors import TraceError
from agents.backends.replay import ReplayBackend, parse_tz, trapezoid_energy_mj
from agents.cli import main as agent_main
from agents.cli import summary_line
from agents.config import AgentConfig, ConfigError, load_config
from agents.daemon import AgentDaemon
from tests.support.helpers import T0

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
        (  # a short line that is not the last one is not a cut-off line
            "timestamp,gpu_uuid,power_w\n2026-11-02T00:00:00Z,GPU-a\n2026-11-02T00:00:01Z,GPU-a,1\n",
            r"simple.csv:2: 2 values, the header has 3",
        ),
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
    from tests.agents.test_agent_kafka import node_samples

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


# --- any nvidia-smi log: no GPU ids, index / bus id keys, cut-off last line, time zones, cadence

ISSUE_QUERY = "timestamp, power.draw [W], utilization.gpu [%], utilization.memory [%]"  # no GPU id column


def test_a_log_without_gpu_ids_is_one_gpu_named_by_gpu_uuid(tmp_path: Path, caplog):
    trace = tmp_path / "one.csv"
    trace.write_text(
        f"{ISSUE_QUERY}\n"
        "2026/11/02 10:00:00.000, 100.00 W, 10 %, 1 %\n"
        "2026/11/02 10:00:00.250, 300.00 W, 30 %, 1 %\n"
        "2026/11/02 10:00:00.500, 100.00 W, 50 %, 1 %\n"
    )
    with pytest.raises(TraceError, match=r"one.csv: header has no GPU id column .*pass --gpu-uuid UUID"):
        ReplayBackend(trace)
    caplog.set_level(logging.INFO, "agents.backends.replay")
    backend = ReplayBackend(trace, gpu_uuid="GPU-solo")
    assert backend.gpu_key == "fixed" and "every row is GPU GPU-solo" in caplog.text
    assert [
        (ts - T0 - 36_000_000, [(r.gpu_uuid, r.energy_mj, r.util_gpu_pct) for r in g]) for ts, g in backend.ticks()
    ] == [
        (0, [("GPU-solo", 0, 10)]),
        (250, [("GPU-solo", 50_000, 30)]),  # (100 W + 300 W) / 2 x 0.25 s
        (500, [("GPU-solo", 100_000, 50)]),
    ]
    assert trapezoid_energy_mj(trace, gpu_uuid="GPU-solo") == {"GPU-solo": 100_000}


def test_gpu_uuid_is_refused_where_the_log_names_its_gpus_or_holds_more_than_one(tmp_path: Path):
    trace = tmp_path / "smi.csv"
    write_smi_trace(trace, ticks=3)
    with pytest.raises(TraceError, match=r"smi.csv: the log names its GPUs in a uuid column; --gpu-uuid is for"):
        ReplayBackend(trace, gpu_uuid="GPU-x")
    by_index = tmp_path / "index.csv"
    by_index.write_text(
        "timestamp, index, power.draw [W]\n"
        "2026/11/02 10:00:00.000, 0, 100.00 W\n2026/11/02 10:00:01.000, 0, 100.00 W\n"
        "2026/11/02 10:00:01.003, 1, 100.00 W\n"
    )
    with pytest.raises(TraceError, match=r"index.csv:4: a second GPU \(index 1\) in a log replayed as the single GPU"):
        ReplayBackend(by_index, gpu_uuid="GPU-x")
    by_index.write_text(
        "timestamp, index, power.draw [W]\n2026/11/02 10:00:00.000, 0, 1 W\n2026/11/02 10:00:01.000, 0, 1 W\n"
    )
    assert {r.gpu_uuid for _, g in ReplayBackend(by_index, gpu_uuid="GPU-x").ticks() for r in g} == {"GPU-x"}


def test_a_second_row_at_the_same_time_in_a_log_without_ids_is_refused(tmp_path: Path):
    trace = tmp_path / "two.csv"
    trace.write_text(
        f"{ISSUE_QUERY}\n"
        "2026/11/02 10:00:00.000, 100.00 W, 10 %, 1 %\n"
        "2026/11/02 10:00:00.000, 300.00 W, 30 %, 1 %\n"
        "2026/11/02 10:00:01.000, 300.00 W, 30 %, 1 %\n"
    )
    with pytest.raises(TraceError, match=r"two.csv:3: a second row at the same time in a log without GPU ids"):
        ReplayBackend(trace, gpu_uuid="GPU-x")


def test_a_multi_gpu_log_is_keyed_by_index_or_bus_id_and_says_which(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, "agents.backends.replay")
    trace = tmp_path / "index.csv"
    trace.write_text(
        "timestamp, index, power.draw [W], utilization.gpu [%]\n"
        "2026/11/02 10:00:00.000, 0, 100.00 W, 10 %\n2026/11/02 10:00:00.001, 1, 200.00 W, 20 %\n"
        "2026/11/02 10:00:00.250, 0, 100.00 W, 10 %\n2026/11/02 10:00:00.251, 1, 200.00 W, 20 %\n"
    )
    backend = ReplayBackend(trace, node_id="host-7")
    assert backend.gpu_key == "index"
    assert [[r.gpu_uuid for r in g] for _, g in backend.ticks()] == [["host-7:index:0", "host-7:index:1"]] * 2
    assert "no uuid column, so GPUs are keyed by index: host-7:index:0, host-7:index:1" in caplog.text
    assert trapezoid_energy_mj(trace, node_id="host-7") == {"host-7:index:0": 25_000, "host-7:index:1": 50_000}
    both = tmp_path / "bus.csv"  # a bus id is stable across reboots: preferred over the index
    both.write_text(
        "index, pci.bus_id, timestamp, power.draw [W]\n"
        "0, 00000000:17:00.0, 2026/11/02 10:00:00.000, 100.00 W\n1, 00000000:2A:00.0, 2026/11/02 10:00:00.001, 1 W\n"
    )
    backend = ReplayBackend(both, node_id="host-7")
    assert backend.gpu_key == "pci.bus_id"
    assert [r.gpu_uuid for r in backend.ticks()[0][1]] == [
        "host-7:pci.bus_id:00000000:17:00.0",
        "host-7:pci.bus_id:00000000:2A:00.0",
    ]


CUT_OFF = "timestamp,gpu_uuid,power_w,util_gpu_pct\n1800000000000,GPU-a,100,10\n1800000000250,GPU-a,300,20\n"


@pytest.mark.parametrize(
    "tail,problem",
    [
        ("1800000000500\n", "1 values, the header has 4"),  # the issue's "1 values, the header has 5"
        ("1800000000500,GPU-a,30", "3 values, the header has 4"),  # no newline either
        ("1800000000500,GPU-a,300,2", "no newline at its end, so its last value may be cut short"),  # "2" of "25"?
        ("1800000000500,GPU-a,300,[N/", "cannot read this row (util_gpu '[N/' is not a number)"),  # of [N/A]
        ("1800000000500,GPU-a\n\n\n", "2 values, the header has 4"),  # blank lines after it
    ],
)
def test_a_cut_off_last_line_is_skipped_with_one_warning(tmp_path: Path, caplog, tail: str, problem: str):
    trace = tmp_path / "simple.csv"
    trace.write_text(CUT_OFF + tail)
    backend = ReplayBackend(trace)
    assert [(ts, g[0].energy_mj) for ts, g in backend.ticks()] == [(1800000000000, 0), (1800000000250, 50_000)]
    assert backend.skipped_line == f"{trace}:4: {problem}"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == f"{trace}:4: skipped the last line, cut off while the log was written ({problem})"
    assert trapezoid_energy_mj(trace) == {"GPU-a": 50_000}


@pytest.mark.parametrize(
    "body,reason",
    [
        (CUT_OFF + "1800000000500,GPU-a\n1800000000750,GPU-a,1,1\n", r"simple.csv:4: 2 values, the header has 4"),
        (  # it ends in a newline: a whole line, and wrong
            CUT_OFF + "1800000000500,GPU-a,1,2x\n",
            r"simple.csv:4: cannot read this row \(util_gpu '2x' is not a number\)",
        ),
        (CUT_OFF + "1800000000500,GPU-a,1,2x\n1800000000750,GPU-a", r"simple.csv:4: cannot read this row"),
        (CUT_OFF + "1800000000500,,1,2", r"simple.csv:4: empty GPU id"),
        (CUT_OFF + "1800000000100,GPU-a,1,2\n", r"simple.csv:4: timestamp goes back in time for GPU-a"),
    ],
)
def test_any_other_bad_line_is_still_an_error(tmp_path: Path, body: str, reason: str):
    trace = tmp_path / "simple.csv"
    trace.write_text(body)
    with pytest.raises(TraceError, match=reason):
        ReplayBackend(trace)


def test_tz_offsets_zones_and_the_repeated_hour(tmp_path: Path):
    assert parse_tz("+05:30").utcoffset(None) == timedelta(hours=5, minutes=30)
    assert parse_tz("-0800").utcoffset(None) == timedelta(hours=-8)
    assert parse_tz("UTC+1").utcoffset(None) == timedelta(hours=1)
    assert parse_tz("utc") is timezone.utc and str(parse_tz("Europe/Berlin")) == "Europe/Berlin"
    for bad in ("+24:00", "+05:60", "Mars/Base", "../etc/passwd", "5"):
        with pytest.raises(ValueError, match="time zone"):
            parse_tz(bad)
    trace = tmp_path / "local.csv"
    trace.write_text(
        "timestamp,gpu_uuid,power_w\n"
        "2026/11/02 10:00:00.000,GPU-a,1\n"
        "2026-11-02T10:00:01,GPU-a,1\n"  # ISO without an offset: local too
        "2026-11-02T09:00:02+00:00,GPU-a,1\n"  # with an offset: absolute, the zone is not applied
        "1793610003000,GPU-a,1\n"  # epoch ms: absolute
    )
    utc_ten = T0 + 10 * 3_600_000
    expected = [utc_ten - 3_600_000 + i * 1000 for i in range(4)]  # Berlin is UTC+01:00 in November
    assert [ts for ts, _ in ReplayBackend(trace, tz="Europe/Berlin").ticks()] == expected
    iso = tmp_path / "iso.csv"
    iso.write_text(  # ISO forms that Python 3.10's fromisoformat refuses read the same on every Python
        "timestamp,gpu_uuid,power_w\n2026-11-02T10:00:00.5+0100,GPU-a,1\n2026-11-02 10:00:01.123456789Z,GPU-a,1\n"
        "2026-11-02T05:00:02.25-05,GPU-a,1\n"
    )
    assert [ts - utc_ten for ts, _ in ReplayBackend(iso).ticks()] == [-3_600_000 + 500, 1123, 2250]
    assert [ts for ts, _ in ReplayBackend(trace, tz="+01:00").ticks()] == expected
    assert [ts for ts, _ in ReplayBackend(trace, tz_offset_minutes=60).ticks()] == expected
    with pytest.raises(TraceError, match="unknown time zone 'Nowhere'"):
        ReplayBackend(trace, tz="Nowhere")
    # New York, 2026-11-01: 01:00-02:00 local happens twice (EDT, then EST); the log runs through it
    fall = tmp_path / "fall.csv"
    stamps = ["01:59:59.000", "01:59:59.500", "01:00:00.000", "01:00:00.500", "01:59:59.900", "02:00:00.400"]
    fall.write_text("timestamp,gpu_uuid,power_w\n" + "".join(f"2026/11/01 {s},GPU-a,1\n" for s in stamps))
    first_pass = int(datetime(2026, 11, 1, 5, 59, 59, tzinfo=timezone.utc).timestamp() * 1000)  # 01:59:59 EDT
    assert [ts - first_pass for ts, _ in ReplayBackend(fall, tz="America/New_York").ticks()] == [
        0,
        500,
        1000,
        1500,
        3_600_900,
        3_601_400,
    ]


def test_replayed_samples_carry_the_log_cadence_as_interval_ms(tmp_path: Path, capsys):
    trace = tmp_path / "cadence.csv"
    steps = [0, 250, 500, 700, 1700, 1701, 1701 + 45_000]
    trace.write_text("timestamp,gpu_uuid,power_w\n" + "".join(f"{1_800_000_000_000 + s},GPU-a,1\n" for s in steps))
    assert agent_main(["--backend", "replay", "--trace", str(trace), "--speed", "0", "--stdout", "--node-id", "n"]) == 0
    samples = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["interval_ms"] for s in samples] == [250, 250, 250, 200, 1000, 1, 45_000]
    assert [s["ts_ms"] - 1_800_000_000_000 for s in samples] == steps
    trace.write_text("timestamp,gpu_uuid,power_w\n1800000000000,GPU-a,1\n")  # one row: the configured interval
    assert agent_main(["--backend", "replay", "--trace", str(trace), "--stdout", "--interval-ms", "333"]) == 0
    assert json.loads(capsys.readouterr().out)["interval_ms"] == 333


def test_tz_and_gpu_uuid_settings_come_from_toml_env_and_flags(tmp_path: Path, capsys):
    path = tmp_path / "agent.toml"
    path.write_text(
        f'backend = "replay"\ntrace = "{tmp_path / "x.csv"}"\ntrace_tz = "Asia/Tokyo"\ntrace_gpu_uuid = "GPU-f"\n'
    )
    config = load_config(path, environ={})
    assert (config.trace_tz, config.trace_gpu_uuid) == ("Asia/Tokyo", "GPU-f")
    env = {"WATTMETER_TRACE_TZ": "+05:30", "WATTMETER_TRACE_GPU_UUID": "GPU-e"}
    assert (load_config(path, environ=env).trace_tz, load_config(path, environ=env).trace_gpu_uuid) == (
        "+05:30",
        "GPU-e",
    )
    flags = load_config(path, {"trace_tz": "-03:00"}, environ=env)
    assert (flags.trace_tz, flags.trace_gpu_uuid) == ("-03:00", "GPU-e")
    with pytest.raises(ConfigError, match=r"trace_tz: unknown time zone 'Atlantis'"):
        load_config(path, environ={"WATTMETER_TRACE_TZ": "Atlantis"})
    with pytest.raises(ConfigError, match="speed must be >= 0"):
        load_config(path, {"speed": -1}, environ={})
    # the flags reach the backend: a local 10:00 in Tokyo is 01:00 UTC
    trace = tmp_path / "x.csv"
    trace.write_text(f"{ISSUE_QUERY}\n2026/11/02 10:00:00.000, 1.00 W, 1 %, 1 %\n")
    argv = ["--config", str(path), "--stdout", "--speed", "0"]
    assert agent_main(argv) == 0
    (sample,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (sample["ts_ms"], sample["gpus"][0]["gpu_uuid"]) == (T0 + 3_600_000, "GPU-f")
    assert agent_main([*argv, "--tz", "+00:00", "--gpu-uuid", "GPU-g"]) == 0
    (sample,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (sample["ts_ms"], sample["gpus"][0]["gpu_uuid"]) == (T0 + 10 * 3_600_000, "GPU-g")


@pytest.mark.parametrize(
    "body,extra,message",
    [
        (f"{ISSUE_QUERY}\n2026/11/02 10:00:00.000, 1 W, 1 %, 1 %\n", [], "header has no GPU id column"),
        (CUT_OFF + "1800000000500,GPU-a\n1800000000750,GPU-a,1,1\n", [], "bad.csv:4: 2 values, the header has 4"),
        (CUT_OFF, ["--tz", "+99:00"], "trace_tz: time zone offset '+99:00' is out of range"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, capsys, body: str, extra: list[str], message: str):
    trace = tmp_path / "bad.csv"
    trace.write_text(body)
    assert agent_main(["--backend", "replay", "--trace", str(trace), "--stdout", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattmeter-agent: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_run_ends_with_a_one_line_summary(tmp_path: Path, caplog, capsys):
    assert (
        summary_line("n1", 12, 10, 2)
        == "done: node n1: 12 samples taken, 10 sent, 2 still spooled (sent at the next start)"
    )
    assert summary_line("n1", 5, 5, 0) == "done: node n1: 5 samples taken, 5 sent, 0 still spooled"
    assert summary_line("n1", 9, 1, 3, dropped=5).endswith(", 5 DROPPED (spool over its bounds)")
    caplog.set_level(logging.INFO, "wattmeter-agent")
    trace = tmp_path / "simple.csv"
    trace.write_text(CUT_OFF)
    assert (
        agent_main(["--backend", "replay", "--trace", str(trace), "--stdout", "--speed", "0", "--node-id", "n2"]) == 0
    )
    assert [r.getMessage() for r in caplog.records if r.name == "wattmeter-agent"] == [
        "done: node n2: 2 samples taken, printed to stdout (no Kafka, no spool)"
    ]
    # through the daemon (no Kafka configured: spooled, none sent)
    config = AgentConfig(node_id="n3", backend="replay", trace=trace, speed=0, spool_dir=tmp_path / "spool")
    daemon = AgentDaemon(config, backend=ReplayBackend.from_config(config))
    assert daemon.run() == 2
    registry = daemon.metrics.registry
    taken = registry.get_sample_value("wattmeter_agent_samples_taken_total")
    assert (taken, daemon.spool.pending_rows) == (2.0, 2)


# --- sweep-shaped logs: several GPUs' rows a few ms apart, then a gap of the cadence, and no GPU id column


def write_sweeps(path: Path, gpus: int = 4, sweeps: int = 5, row_ms: int = 2, cadence_ms: int = 1000) -> list[int]:
    """An nvidia-smi log of `gpus` GPUs without an id column (GPU g draws 100 x (g + 1) W); returns row times."""
    stamps = [s * cadence_ms + g * row_ms for s in range(sweeps) for g in range(gpus)]
    start = datetime(2026, 11, 2, 10, 0)
    lines = [
        f"{start + timedelta(milliseconds=ms):%Y/%m/%d %H:%M:%S.%f}"[:-3] + f", {100 * (i % gpus + 1)}.00 W, 5 %, 1 %"
        for i, ms in enumerate(stamps)
    ]
    path.write_text(f"{ISSUE_QUERY}\n" + "\n".join(lines) + "\n")
    return stamps


def test_a_sweep_shaped_log_is_refused_as_one_gpu(tmp_path: Path):
    trace = tmp_path / "four.csv"
    write_sweeps(trace)
    reason = (
        r"four.csv: rows come in sweeps of 4 within 6 ms, a sweep every 1000 ms: a log of 4 GPUs without GPU ids, "
        r"not GPU GPU-x sampled every 2 ms; add index or uuid to --query-gpu, or pass --gpus-per-sweep 4"
    )
    with pytest.raises(TraceError, match=reason):
        ReplayBackend(trace, gpu_uuid="GPU-x")
    with pytest.raises(TraceError, match=reason):
        trapezoid_energy_mj(trace, gpu_uuid="GPU-x")
    write_sweeps(trace, gpus=2, sweeps=3, row_ms=0, cadence_ms=250)  # identical stamps within a sweep
    with pytest.raises(TraceError, match=r"four.csv:3: a second row at the same time .*or --gpus-per-sweep N"):
        ReplayBackend(trace, gpu_uuid="GPU-x")
    write_sweeps(trace, gpus=8, sweeps=1, row_ms=3)  # one sweep (nvidia-smi without -l): 8 rows in 21 ms
    with pytest.raises(TraceError, match=r"four.csv: 8 rows within 21 ms, far below the interval \(1000 ms\)"):
        ReplayBackend(trace, gpu_uuid="GPU-x")
    # a single GPU's log stays one GPU: even cadence (with jitter and an outage), or fast and long
    for stamps in ([0, 250, 500], [i * 1000 + (i * 37) % 41 for i in range(50)] + [3_600_000, 3_601_000]):
        trace.write_text(
            f"{ISSUE_QUERY}\n" + "".join(f"{1_800_000_000_000 + ms}, 100.00 W, 5 %, 1 %\n" for ms in stamps)
        )
        assert len(ReplayBackend(trace, gpu_uuid="GPU-x").ticks()) == len(stamps)
    trace.write_text(f"{ISSUE_QUERY}\n" + "".join(f"{1_800_000_000_000 + 5 * i}, 1 W, 5 %, 1 %\n" for i in range(400)))
    assert len(ReplayBackend(trace, gpu_uuid="GPU-x").ticks()) == 400


def test_gpus_per_sweep_keys_gpus_by_row_position(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, "agents.backends.replay")
    trace = tmp_path / "four.csv"
    write_sweeps(trace)
    backend = ReplayBackend(trace, gpus_per_sweep=4, node_id="host-7")
    gpus = [f"host-7:index:{g}" for g in range(4)]
    assert backend.gpu_key == "sweep"
    assert [[r.gpu_uuid for r in readings] for _, readings in backend.ticks()] == [gpus] * 5
    assert [ts - backend.ticks()[0][0] for ts, _ in backend.ticks()] == [0, 1000, 2000, 3000, 4000]
    # the whole bill: GPU g at 100 x (g + 1) W for 4 s, not one GPU for 4 x 5 rows of 2 ms
    assert {r.gpu_uuid: r.energy_mj for r in backend.ticks()[-1][1]} == {
        g: 400_000 * (i + 1) for i, g in enumerate(gpus)
    }
    assert trapezoid_energy_mj(trace, gpus_per_sweep=4, node_id="host-7") == {
        g: 400_000 * (i + 1) for i, g in enumerate(gpus)
    }
    assert "GPUs keyed by their row's position in each sweep of 4 (--gpus-per-sweep): host-7:index:0" in caplog.text
    write_sweeps(trace, gpus=2, sweeps=3, row_ms=0, cadence_ms=250)  # identical stamps are fine here
    assert len(ReplayBackend(trace, gpus_per_sweep=2, node_id="h").ticks()) == 3


NOT_N = {  # what a --gpus-per-sweep replay refuses: (log, N, other arguments, reason)
    "longer": (
        "sweeps",
        3,
        {},
        r"four.csv:2: a sweep of 4 rows \(2026/11/02 10:00:00.000 to 2026/11/02 10:00:00.006\)",
    ),
    "shorter": (
        "short",
        4,
        {},
        r"four.csv:6: a sweep of 3 rows \(2026/11/02 10:00:01.000 to 2026/11/02 10:00:01.004\)",
    ),
    "no sweeps": ("even", 2, {}, r"four.csv: its rows do not come in sweeps"),
    "gpu uuid": ("sweeps", 4, {"gpu_uuid": "GPU-x"}, r"--gpu-uuid names one GPU; with --gpus-per-sweep 4"),
    "ids": ("index", 2, {}, r"index.csv: the log names its GPUs in an index column; --gpus-per-sweep is for a log"),
}


@pytest.mark.parametrize("lines,n,extra,reason", NOT_N.values(), ids=NOT_N.keys())
def test_a_sweep_that_is_not_n_rows_is_an_error(tmp_path: Path, lines: str, n: int, extra: dict, reason: str):
    trace = tmp_path / ("index.csv" if lines == "index" else "four.csv")
    if lines == "sweeps":
        write_sweeps(trace)
    elif lines == "short":  # the second sweep lacks a GPU
        stamps = write_sweeps(trace)
        kept = trace.read_text().splitlines()
        trace.write_text("\n".join(kept[:8] + kept[9:]) + "\n")
        assert len(stamps) == 20
    elif lines == "even":
        trace.write_text(
            f"{ISSUE_QUERY}\n" + "".join(f"{1_800_000_000_000 + 1000 * i}, 1 W, 5 %, 1 %\n" for i in range(9))
        )
    else:
        trace.write_text("timestamp, index, power.draw [W]\n1800000000000, 0, 1 W\n1800000000002, 1, 1 W\n")
    with pytest.raises(TraceError, match=reason):
        ReplayBackend(trace, gpus_per_sweep=n, **extra)


def test_a_short_last_sweep_is_kept_with_one_warning(tmp_path: Path, caplog):
    trace = tmp_path / "four.csv"
    write_sweeps(trace)
    kept = trace.read_text().splitlines()
    trace.write_text("\n".join(kept[:-2]) + "\n")  # copied while nvidia-smi wrote the last sweep
    backend = ReplayBackend(trace, gpus_per_sweep=4, node_id="h")
    assert [len(readings) for _, readings in backend.ticks()] == [4, 4, 4, 4, 2]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        warning == f"{trace}:18: the last sweep has 2 rows of 4 (cut off while the log was written?); kept as they are"
    )


def test_cli_refuses_a_sweep_shaped_log_in_one_line_and_sends_nothing(tmp_path: Path, capsys):
    trace = tmp_path / "four.csv"
    write_sweeps(trace)
    spool = tmp_path / "spool"
    argv = ["--backend", "replay", "--trace", str(trace), "--speed", "0", "--node-id", "h", "--spool-dir", str(spool)]
    assert agent_main([*argv, "--gpu-uuid", "GPU-x", "--bootstrap", "127.0.0.1:9"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not spool.exists()
    assert captured.err.startswith("wattmeter-agent: ") and captured.err.count("\n") == 1
    assert "a log of 4 GPUs without GPU ids" in captured.err and "--gpus-per-sweep 4" in captured.err
    assert agent_main([*argv, "--gpus-per-sweep", "4", "--stdout"]) == 0
    samples = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(s["gpus"]) for s in samples] == [4] * 5 and [s["interval_ms"] for s in samples] == [1000] * 5
    assert agent_main([*argv, "--gpus-per-sweep", "0", "--stdout"]) == 2
    assert "gpus_per_sweep must be at least 1" in capsys.readouterr().err


def test_the_replay_agent_says_it_follows_the_log_not_an_interval(tmp_path: Path, caplog):
    trace = tmp_path / "four.csv"
    write_sweeps(trace)
    caplog.set_level(logging.INFO, "agents.daemon")
    env = {"WATTMETER_TRACE_GPUS_PER_SWEEP": "4"}
    config = load_config(None, {"backend": "replay", "trace": trace, "speed": 0, "spool_dir": tmp_path / "s"}, env)
    assert config.trace_gpus_per_sweep == 4
    assert AgentDaemon(config).run() == 5
    (started,) = [r.getMessage() for r in caplog.records if r.name == "agents.daemon" and "boot" in r.getMessage()]
    assert f"replaying {trace} at the log's own cadence (5 ticks over 4000 ms, typically 1000 ms apart; " in started
    assert "as fast as possible)" in started and "sampling every" not in started
    caplog.clear()
    simulated = AgentConfig(node_id="n4", interval_ms=250, spool_dir=tmp_path / "sim")
    assert AgentDaemon(simulated).run(ticks=1) == 1
    assert any("n4 sampling every 250 ms" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="trace_gpus_per_sweep must be a number"):
        load_config(None, {}, {"WATTMETER_TRACE_GPUS_PER_SWEEP": "four"})
