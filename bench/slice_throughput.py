"""GPU-samples per second through the whole slice (agent producer -> broker -> Faust
worker -> usage.records -> Parquet sink), beside a bare kafka-python producer and
consumer moving the same message bytes through the same broker in the same run."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from bench.results import BenchResult
from deploy.local.demo import windows_written
from deploy.local.fleet import FleetPlan, encoded_samples, publish_samples
from deploy.local.pipeline import service_env, start_sink, start_worker, wait_for
from schemas.units import MS_PER_MINUTE

BENCH_START_MS = 1_793_664_000_000  # 2026-11-03T00:00:00Z


def _plan(tag: str, nodes: int, ticks: int) -> FleetPlan:
    return FleetPlan(
        nodes=[f"bench-{tag}-{i}" for i in range(nodes)], gpus_per_node=8, start_ms=BENCH_START_MS, ticks=ticks, seed=7
    )


def bare_kafka_roundtrip(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Seconds for kafka-python to produce the messages (acks=all, lz4) and consume them all back."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    topic = f"bench.baseline.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    began = time.perf_counter()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap],
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=20,
        batch_size=256 * 1024,
    )
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[bootstrap],
        auto_offset_reset="earliest",
        group_id=f"bench-{topic}",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    received = 0
    while received < len(messages):
        for records in consumer.poll(timeout_ms=1000).values():
            received += len(records)
    consumer.close()
    return time.perf_counter() - began


def run(bootstrap: str, nodes: int = 8, ticks: int = 600) -> list[BenchResult]:
    tag = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="wattmeter-bench-"))
    usage_dir = work / "usage"
    env = service_env(
        bootstrap, f"bench-{tag}", usage_dir, work / "state", WATTMETER_CHECK_FUTURE="0", WATTMETER_SINK_SECONDS="0.5"
    )
    services = (start_worker(env, work / "worker.log"), start_sink(env, work / "sink.log"))
    try:
        warm = _plan(f"{tag}w", 1, 130)  # warm-up: the worker has joined and the sink writes
        publish_samples(bootstrap, warm)
        wait_for(
            lambda: windows_written(usage_dir, warm.start_ms, warm.start_ms + MS_PER_MINUTE, warm.gpu_uuids()) >= 8,
            180,
            "the warm-up window",
            services,
            poll_s=0.2,
        )
        plan = _plan(tag, nodes, ticks)
        closed_minutes = (ticks - 1 - 5) // 60  # windows the 5 s lateness lets close
        expected = len(plan.gpu_uuids()) * closed_minutes
        began = time.perf_counter()
        sent = publish_samples(bootstrap, plan)
        wait_for(
            lambda: (
                windows_written(
                    usage_dir, plan.start_ms, plan.start_ms + closed_minutes * MS_PER_MINUTE, plan.gpu_uuids()
                )
                >= expected
            ),
            600,
            "the bench windows",
            services,
            poll_s=0.1,
        )
        slice_s = time.perf_counter() - began
    finally:
        for service in services:
            service.stop()
    gpu_samples = sent * plan.gpus_per_node
    baseline_s = bare_kafka_roundtrip(bootstrap, encoded_samples(plan))
    return [
        BenchResult(
            name="slice_gpu_samples_per_s",
            value=round(gpu_samples / slice_s, 1),
            unit="GPU-samples/s",
            baseline=f"bare kafka-python produce+consume of the same {sent} messages",
            baseline_value=round(gpu_samples / baseline_s, 1),
            target=">= 20,000 GPU-samples/s per worker (issue 5)",
        )
    ]
