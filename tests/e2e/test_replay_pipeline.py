"""Ordinary nvidia-smi logs, written here at sub-second cadence, replayed by `wattmeter-agent`
(a child process, as an operator runs it) through the real broker, the real Faust worker and
the Parquet sink: the energy read back equals each GPU's trapezoid integral of the log to the
mJ, and busy GPU-ms the floor of the exact integral of utilization x time."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from deploy.local.pipeline import ServiceProcess, service_env, start_sink, start_worker, wait_for
from schemas.topics import GPU_SAMPLES_DLQ
from streams.windows import window_start

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Log:
    """A log as the test wrote it, and what each GPU should come to."""

    lines: list[str]
    rows: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # GPU -> [(row ts, mW)]
    ticks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # GPU -> [(query ts, util %)]

    def energy_mj(self, gpu: str) -> int:
        """The trapezoid integral of the GPU's power over its own row times, floored once."""
        rows = self.rows[gpu]
        return sum((p1 + p2) * (t2 - t1) for (t1, p1), (t2, p2) in zip(rows, rows[1:])) // 2000

    def busy_ms(self, gpu: str) -> int:
        """floor(sum(util x dt) / 100), each interval closed by the sample at its end."""
        ticks = self.ticks[gpu]
        return sum(util * (t2 - t1) for (t1, _), (t2, util) in zip(ticks, ticks[1:])) // 100

    def span_ms(self, gpu: str) -> int:
        return self.ticks[gpu][-1][0] - self.ticks[gpu][0][0]


def smi_stamp(local: datetime) -> str:
    return f"{local:%Y/%m/%d %H:%M:%S}.{local.microsecond // 1000:03d}"


def write_log(
    path: Path,
    header: str,
    ids: list[str | None],
    names: list[str],
    start_utc: datetime,
    utc_offset: timedelta,
    cadence_ms: int,
    queries: int,
    seed: int,
) -> Log:
    """`queries` nvidia-smi queries `cadence_ms` apart (a few ms of jitter), one row per GPU 1 ms
    apart, power with two decimals, utilization 0..100; timestamps in local time (`utc_offset`)."""
    rng = random.Random(seed)
    log = Log([header], {n: [] for n in names}, {n: [] for n in names})
    at = start_utc
    for _ in range(queries):
        query_ms = int(at.timestamp() * 1000)
        for position, (gpu_id, name) in enumerate(zip(ids, names)):
            row_time = at + timedelta(milliseconds=position)
            centiwatts = rng.randint(5_000, 70_000)
            util = rng.randint(0, 100)
            cells = [smi_stamp(row_time + utc_offset)]
            cells += [gpu_id] if gpu_id is not None else []
            cells += [f"{centiwatts // 100}.{centiwatts % 100:02d} W", f"{util} %", f"{util // 3} %"]
            log.lines.append(", ".join(cells))
            log.rows[name].append((query_ms + position, centiwatts * 10))
            log.ticks[name].append((query_ms, util))
        at += timedelta(milliseconds=cadence_ms + rng.randint(-3, 3))
    path.write_text("\n".join(log.lines) + "\n")
    return log


@dataclass
class Pipeline:
    bootstrap: str
    usage_dir: Path
    work: Path
    services: tuple[ServiceProcess, ...]


@pytest.fixture(scope="module")
def pipeline(kafka_broker, tmp_path_factory) -> Iterator[Pipeline]:
    """One worker and one sink for the module's logs; windows of a node silent for 2 s close."""
    work = tmp_path_factory.mktemp("replay-pipeline")
    app_id = f"replay-{uuid.uuid4().hex[:8]}"
    env = service_env(
        kafka_broker.bootstrap,
        app_id,
        work / "usage",
        work / "state",
        WATTMETER_SINK_SECONDS="0.5",
        WATTMETER_IDLE_CLOSE_MS="2000",
    )
    services = (start_worker(env, work / "worker.log"), start_sink(env, work / "sink.log"))
    yield Pipeline(kafka_broker.bootstrap, work / "usage", work, services)
    for service in services:
        service.stop()


def replay(pipeline: Pipeline, node: str, trace: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    """`wattmeter-agent --backend replay` as fast as it goes; returns its log (stderr)."""
    spool = pipeline.work / f"spool-{node}"
    argv = [sys.executable, "-m", "agents.cli", "--backend", "replay", "--trace", str(trace), "--speed", "0"]
    argv += ["--node-id", node, "--spool-dir", str(spool), "--bootstrap", pipeline.bootstrap, *flags]
    result = subprocess.run(
        argv, cwd=ROOT, env={**_base_env(), **(env or {})}, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATTMETER_", "KAFKA_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def parquet_totals(usage_dir: Path, gpus: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """GPU -> (allocated GPU-ms, busy GPU-ms, mJ, first window start), over every record kind."""
    files = [str(p) for p in usage_dir.glob("date=*/*.parquet")]
    if not files:
        return {}
    rows = duckdb.sql(
        f"select gpu_uuid, sum(allocated_gpu_ms)::BIGINT, sum(busy_gpu_ms)::BIGINT, sum(energy_mj)::BIGINT, "
        f"min(window_start_ms) from read_parquet({files}) where gpu_uuid in ({', '.join(repr(g) for g in gpus)}) "
        "group by 1"
    ).fetchall()
    return {gpu: (alloc, busy, mj, first) for gpu, alloc, busy, mj, first in rows}


def dlq_keys(bootstrap: str) -> set[bytes]:
    """Every key on the DLQ, read to its end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(GPU_SAMPLES_DLQ, p) for p in consumer.partitions_for_topic(GPU_SAMPLES_DLQ) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        keys: set[bytes] = set()
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=1000).values():
                keys.update(r.key for r in records)
        return keys
    finally:
        consumer.close()


def check_read_back(pipeline: Pipeline, node: str, log: Log, gpus: dict[str, str]) -> None:
    """Wait until every GPU's whole span is in the Parquet, then compare it with the log."""
    wanted = list(gpus.values())

    def complete() -> bool:
        got = parquet_totals(pipeline.usage_dir, wanted)
        return all(gpu in got and got[gpu][0] >= log.span_ms(name) for name, gpu in gpus.items())

    wait_for(complete, 180, f"{node}'s replay in Parquet", pipeline.services)
    got = parquet_totals(pipeline.usage_dir, wanted)
    for name, gpu in gpus.items():
        first_tick = log.ticks[name][0][0]
        assert got[gpu] == (
            log.span_ms(name),
            log.busy_ms(name),
            log.energy_mj(name),
            window_start(first_tick, 60_000),  # the time zone was applied: the first window is the right one
        ), name
    assert node.encode() not in dlq_keys(pipeline.bootstrap)


def summary_of(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if " done: node " in line]
    return line.split(" done: ", 1)[1]


START = datetime(2026, 11, 2, 10, 0, 0, 125000, tzinfo=timezone.utc)


def test_a_single_gpu_log_without_ids_replays_with_gpu_uuid_and_tz(pipeline: Pipeline, tmp_path: Path):
    """The issue's query exactly (no GPU id column), 250 ms apart, in India's local time."""
    node, gpu = f"solo-{uuid.uuid4().hex[:8]}", f"GPU-{uuid.uuid4()}"
    header = "timestamp, power.draw [W], utilization.gpu [%], utilization.memory [%]"
    trace = tmp_path / "solo.csv"
    log = write_log(trace, header, [None], ["solo"], START, timedelta(hours=5, minutes=30), 250, 600, seed=1)
    stderr = replay(pipeline, node, trace, "--gpu-uuid", gpu, "--tz", "+05:30")
    assert summary_of(stderr) == f"node {node}: 600 samples taken, 600 sent, 0 still spooled"
    assert log.busy_ms("solo") != sum(
        u * (t2 - t1) // 100 for (t1, _), (t2, u) in zip(log.ticks["solo"], log.ticks["solo"][1:])
    )
    check_read_back(pipeline, node, log, {"solo": gpu})


def test_a_multi_gpu_log_keyed_by_index_replays(pipeline: Pipeline, tmp_path: Path):
    """3 GPUs by `index`, rows 1 ms apart within a query, queries 250 ms apart, UTC."""
    node = f"idx-{uuid.uuid4().hex[:8]}"
    header = "timestamp, index, power.draw [W], utilization.gpu [%], utilization.memory [%]"
    trace = tmp_path / "index.csv"
    log = write_log(trace, header, ["0", "1", "2"], ["0", "1", "2"], START, timedelta(0), 250, 480, seed=2)
    stderr = replay(pipeline, node, trace)
    assert f"GPUs are keyed by index: {node}:index:0, {node}:index:1, {node}:index:2" in stderr
    assert summary_of(stderr) == f"node {node}: 480 samples taken, 480 sent, 0 still spooled"
    check_read_back(pipeline, node, log, {i: f"{node}:index:{i}" for i in "012"})


def test_a_log_with_a_cut_off_last_line_replays_the_rest(pipeline: Pipeline, tmp_path: Path):
    """2 GPUs by uuid, 200 ms apart, Berlin local time from the environment; the copy was taken
    while nvidia-smi was still writing, so the log ends in the middle of a line."""
    node = f"cut-{uuid.uuid4().hex[:8]}"
    gpus = [f"GPU-{uuid.uuid4()}", f"GPU-{uuid.uuid4()}"]
    header = "timestamp, uuid, power.draw [W], utilization.gpu [%], utilization.memory [%]"
    trace = tmp_path / "cut.csv"
    log = write_log(trace, header, list(gpus), gpus, START, timedelta(hours=1), 200, 500, seed=3)
    with open(trace, "a") as handle:
        handle.write(f"2026/11/02 11:01:40.125, {gpus[0]}, 31")
    stderr = replay(pipeline, node, trace, env={"WATTMETER_TRACE_TZ": "Europe/Berlin"})
    (warning,) = [line for line in stderr.splitlines() if "WARNING" in line]
    assert warning.endswith(
        f"{trace}:1002: skipped the last line, cut off while the log was written (3 values, the header has 5)"
    )
    assert summary_of(stderr) == f"node {node}: 500 samples taken, 500 sent, 0 still spooled"
    check_read_back(pipeline, node, log, {g: g for g in gpus})
