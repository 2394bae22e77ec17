"""Streams figures: one worker's throughput from the real topic to Parquet beside a
vectorized DuckDB rollup of the same samples, and the delay from a window closing to its
row in Parquet beside a bare kafka-python produce-to-consume round trip."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import duckdb

from bench.results import BenchResult
from deploy.local.demo import windows_written
from deploy.local.fleet import FleetPlan, encoded_samples, publish_samples
from deploy.local.pipeline import ServiceProcess, service_env, start_sink, start_worker, wait_for
from schemas.units import MS_PER_HOUR, MS_PER_MINUTE

START_MS = 1_793_836_800_000  # 2026-11-05T00:00:00Z
LATENESS_MS = 5_000


def _plan(tag: str, nodes: int, ticks: int, start_ms: int = START_MS) -> FleetPlan:
    return FleetPlan(
        nodes=[f"sb-{tag}-{i}" for i in range(nodes)], gpus_per_node=8, start_ms=start_ms, ticks=ticks, seed=3
    )


def _send(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], acks="all", linger_ms=20, batch_size=256 * 1024, compression_type="lz4"
    )
    for key, value in messages:
        producer.send("gpu.samples", key=key, value=value)
    producer.flush()
    producer.close()


def duckdb_rollup_seconds(messages: list[tuple[bytes, bytes]]) -> float:
    """The same per-(GPU, minute) rollup in batch on one thread: parse the JSON, counter
    deltas by window function, window assignment and sums. No leases, no splitting at
    window edges: a lower bound on what the streaming rollup does."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "samples.ndjson"
        path.write_bytes(b"\n".join(value for _, value in messages))
        connection = duckdb.connect()
        connection.execute("SET threads = 1")  # one core, like the one worker it is compared with
        began = time.perf_counter()
        connection.sql(f"""
            with gpus as (
                select s.ts_ms, unnest(s.gpus, recursive := true)
                from read_json('{path}', format='newline_delimited') s),
            deltas as (
                select gpu_uuid, ts_ms, power_mw,
                       energy_mj - lag(energy_mj) over w as energy_delta,
                       ts_ms - lag(ts_ms) over w as interval_ms,
                       util_gpu_pct
                from gpus window w as (partition by gpu_uuid order by ts_ms))
            select gpu_uuid, ts_ms - ts_ms % 60000 as window_start, sum(interval_ms) as allocated_ms,
                   sum(energy_delta) as energy_mj, sum(interval_ms * util_gpu_pct // 100) as busy_ms,
                   max(power_mw) as peak_mw, count(*) as samples
            from deltas where interval_ms is not null group by all
        """).fetchall()
        return time.perf_counter() - began


def _windows_of(usage_dir: Path, plan: FleetPlan, minutes: int) -> bool:
    return (
        windows_written(usage_dir, plan.start_ms, plan.start_ms + minutes * MS_PER_MINUTE, plan.gpu_uuids())
        >= len(plan.gpu_uuids()) * minutes
    )


def worker_throughput(bootstrap: str, services: tuple[ServiceProcess, ...], usage_dir: Path) -> list[BenchResult]:
    plan = _plan(uuid.uuid4().hex[:6], nodes=8, ticks=3601)
    messages = encoded_samples(plan)
    minutes = (plan.ticks - 1 - LATENESS_MS // 1000) // 60
    began = time.perf_counter()
    _send(bootstrap, messages)
    wait_for(lambda: _windows_of(usage_dir, plan, minutes), 600, "the throughput load in Parquet", services, poll_s=0.1)
    worker_s = time.perf_counter() - began
    batch_s = duckdb_rollup_seconds(messages)
    gpu_samples = len(messages) * plan.gpus_per_node
    return [
        BenchResult(
            "worker_gpu_samples_per_s",
            round(gpu_samples / worker_s, 1),
            "GPU-samples/s",
            f"DuckDB batch rollup of the same {len(messages)} samples (JSON in, sums out)",
            round(gpu_samples / batch_s, 1),
            ">= 20,000 GPU-samples/s per worker; within 5x of the batch baseline (ratio >= 0.2)",
        )
    ]


def window_close_latency(
    bootstrap: str, services: tuple[ServiceProcess, ...], usage_dir: Path, sink_seconds: float
) -> BenchResult:
    """Publish a minute of samples, then the sample that closes it; time until its rows are in Parquet."""
    plan = _plan(uuid.uuid4().hex[:6], nodes=1, ticks=61 + LATENESS_MS // 1000, start_ms=START_MS + MS_PER_HOUR)
    messages = encoded_samples(plan)
    _send(bootstrap, messages[:-1])
    time.sleep(2)  # everything but the closing sample is processed
    began = time.perf_counter()
    _send(bootstrap, messages[-1:])
    wait_for(lambda: _windows_of(usage_dir, plan, 1), 60, "the closed window in Parquet", services, poll_s=0.02)
    delay_ms = (time.perf_counter() - began) * 1000
    return BenchResult(
        "window_close_to_parquet_ms",
        round(delay_ms, 1),
        "ms",
        "bare kafka-python produce-then-consume of one message",
        round(_bare_round_trip_ms(bootstrap), 1),
        f"a few seconds; bounded by the sink batch interval ({sink_seconds:g} s here)",
    )


def _bare_round_trip_ms(bootstrap: str) -> float:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    tp = TopicPartition("gpu.samples.dlq", 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)
    began = time.perf_counter()
    producer.send("gpu.samples.dlq", value=json.dumps({"bench": "round trip"}).encode(), partition=0).get(10)
    while not consumer.poll(timeout_ms=100):
        pass
    elapsed = (time.perf_counter() - began) * 1000
    producer.close()
    consumer.close()
    return elapsed


def run(bootstrap: str) -> list[BenchResult]:
    work = Path(tempfile.mkdtemp(prefix="wattmeter-streams-bench-"))
    usage_dir = work / "usage"
    sink_seconds = 1.0
    env = service_env(
        bootstrap,
        f"sbench-{uuid.uuid4().hex[:6]}",
        usage_dir,
        work / "state",
        WATTMETER_CHECK_FUTURE="0",
        WATTMETER_SINK_SECONDS=str(sink_seconds),
    )
    services = (start_worker(env, work / "worker.log"), start_sink(env, work / "sink.log"))
    try:
        warm = _plan("warm" + uuid.uuid4().hex[:4], 1, 67, start_ms=START_MS - MS_PER_HOUR)
        publish_samples(bootstrap, warm)
        wait_for(lambda: _windows_of(usage_dir, warm, 1), 180, "the warm-up window", services, poll_s=0.2)
        results = worker_throughput(bootstrap, services, usage_dir)
        results.append(window_close_latency(bootstrap, services, usage_dir, sink_seconds))
    finally:
        for service in services:
            service.stop()
    return results
