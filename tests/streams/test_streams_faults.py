"""Exactly once on the real broker: SIGKILLed workers and sinks, two workers sharing the
topic, and malformed messages, all compared with an undisturbed run of the same rollup."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from agents.kafka_sink import KafkaSampleSink
from deploy.local.fleet import FleetPlan, fleet_samples, publish_leases, publish_samples
from deploy.local.kafka_broker import create_topics, start_jar_broker
from deploy.local.pipeline import ServiceProcess, service_env, start_sink, start_worker, wait_for
from deploy.local.s3_store import S3Store
from lake.store import LakeStore
from schemas.leases import Lease
from schemas.topics import GPU_SAMPLES, GPU_SAMPLES_DLQ, USAGE_RECORDS
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from tests.support.helpers import T0, simulated_samples

pytestmark = pytest.mark.broker
COMPARED = (
    "record_id",
    "kind",
    "tenant_id",
    "lease_id",
    "gpu_uuid",
    "window_start_ms",
    "allocated_gpu_ms",
    "busy_gpu_ms",
    "energy_mj",
    "peak_power_mw",
    "sample_count",
    "observed_ms",
    "unmetered_ms",
)


@pytest.fixture(scope="module")
def fault_broker(tmp_path_factory):
    """A broker of this module's own, so the loads below are the only data on it."""
    broker = start_jar_broker(tmp_path_factory.mktemp("fault-kafka"), 90)
    create_topics(broker.bootstrap)
    yield broker
    broker.stop()


def fleet(tag: str, ticks: int = 600) -> FleetPlan:
    plan = FleetPlan(nodes=[f"{tag}-{i}" for i in range(4)], gpus_per_node=4, start_ms=T0, ticks=ticks, seed=11)
    gpus = plan.gpu_uuids()
    plan.leases = [
        Lease(f"{tag}-l{i}", f"tenant-{i % 3}", gpu, T0 + 45_000 * (i % 4), T0 + 400_000 + 7_000 * i)
        for i, gpu in enumerate(gpus[:12])
    ]
    return plan


def reference_rows(plan: FleetPlan) -> list[tuple]:
    """The undisturbed run: the same rollup over the same samples, in order, in one process."""
    index = LeaseIndex()
    from schemas.leases import GpuLeaseTimeline

    for lease in plan.leases:
        index.put(GpuLeaseTimeline(lease.gpu_uuid, [lease]))
    rows = []
    for node in plan.nodes:
        samples, _ = simulated_samples(node, plan.gpus_per_node, plan.ticks, util=plan.util, seed=plan.seed)
        rollup = NodeRollup(RollupConfig(), index)
        state = new_state(node)
        for offset, sample in enumerate(samples):
            rows += [tuple(r.to_dict()[c] for c in COMPARED) for r in rollup.apply(state, sample, offset).records]
    return sorted(rows)


def parquet_rows(usage_dir: Path | str, gpus: set[str]) -> list[tuple]:
    """The compared columns of every record of `gpus` in the lake (a folder or s3://bucket/prefix)."""
    lake = LakeStore(usage_dir)
    files = [f.path for f in lake.files() if f.folder.startswith("date=") and f.name.endswith(".parquet")]
    if not files:
        return []
    table = ds.dataset(files, format="parquet", filesystem=lake.fs).to_table(columns=list(COMPARED))
    return sorted(row for row in zip(*(table[c].to_pylist() for c in COMPARED)) if row[4] in gpus)


def rows_when_done(services: tuple[ServiceProcess, ...], usage_dir: Path, gpus: set[str], count: int) -> list[tuple]:
    """Wait until `count` rows of `gpus` are in Parquet, a little longer for any duplicate
    to show, stop the services, and return the rows."""
    try:
        wait_for(lambda: len(parquet_rows(usage_dir, gpus)) >= count, 240, "all usage rows", services)
        time.sleep(2)
    finally:
        for service in services:
            service.stop()
    return parquet_rows(usage_dir, gpus)


def messages_in(bootstrap: str, topic: str) -> int:
    """How many messages `topic` holds (sum of its partitions' end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap])
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def run_env(broker, app: str, tmp: Path) -> dict[str, str]:
    return service_env(
        broker.bootstrap,
        app,
        tmp / f"{app}-usage",
        tmp / f"{app}-state",
        WATTMETER_CHECK_FUTURE="0",
        WATTMETER_SINK_SECONDS="0.5",
        WATTMETER_SESSION_TIMEOUT_S="6",
    )


def test_sigkilled_workers_and_sink_give_the_undisturbed_totals(fault_broker, tmp_path):
    plan = fleet("kill", ticks=3600)
    publish_leases(fault_broker.bootstrap, plan.leases)
    publish_samples(fault_broker.bootstrap, plan)
    expected = reference_rows(plan)
    gpus = set(plan.gpu_uuids())
    env = run_env(fault_broker, "killed", tmp_path)
    usage_dir = tmp_path / "killed-usage"
    rng = random.Random(5)
    sink = start_sink(env, tmp_path / "sink.log")
    worker = start_worker(env, tmp_path / "worker-0.log")
    progress_at_kills: list[int] = []
    try:
        # kill the worker at random moments until three kills have landed mid-run (some
        # usage records produced, not all); the sink is killed too, once
        while sum(0 < n < len(expected) for n in progress_at_kills) < 3 and len(progress_at_kills) < 8:
            before = progress_at_kills[-1] if progress_at_kills else 0
            if before >= len(expected):
                break
            wait_for(
                lambda before=before: messages_in(fault_broker.bootstrap, USAGE_RECORDS) > before,
                120,
                "progress after a restart",
                (worker, sink),
                poll_s=0.05,
            )
            time.sleep(rng.uniform(0.0, 0.3))
            progress_at_kills.append(messages_in(fault_broker.bootstrap, USAGE_RECORDS))
            print(f"kill {len(progress_at_kills)} at {progress_at_kills[-1]} of {len(expected)} records", flush=True)
            worker.kill()  # SIGKILL, mid-transaction or not
            if len(progress_at_kills) == 2:
                sink.kill()
                sink = start_sink(env, tmp_path / "sink.log")
            worker = start_worker(env, tmp_path / f"worker-{len(progress_at_kills)}.log")
        wait_for(lambda: len(parquet_rows(usage_dir, gpus)) >= len(expected), 240, "all usage rows", (worker, sink))
        time.sleep(2)  # anything duplicated would show up now
    finally:
        worker.stop()
        sink.stop()
    assert (
        messages_in(fault_broker.bootstrap, GPU_SAMPLES_DLQ) == 0
    )  # a valid load is never refused, not even as "late"
    got = parquet_rows(usage_dir, gpus)
    print("extra", sorted(set(got) - set(expected))[:6], "missing", sorted(set(expected) - set(got))[:6])
    assert sum(0 < n < len(expected) for n in progress_at_kills) >= 3, progress_at_kills
    assert [r for r, n in Counter(r[0] for r in got).items() if n > 1] == []  # no record twice
    assert got == expected  # to the millisecond and millijoule
    assert sum(r[8] for r in got) == sum(r[8] for r in expected)


def publish_slowly(bootstrap: str, plan: FleetPlan, slices: int, pause_s: float) -> None:
    """The plan's samples in `slices` bursts, `pause_s` apart, as a fleet sends them over time."""
    samples = list(fleet_samples(plan))
    sink = KafkaSampleSink(bootstrap)
    try:
        step = -(-len(samples) // slices)
        for first in range(0, len(samples), step):
            for sample in samples[first : first + step]:
                sink.send(sample)
            sink.flush()
            time.sleep(pause_s)
    finally:
        sink.close()


def test_a_sink_sigkilled_while_writing_to_s3_gives_the_undisturbed_totals(fault_broker, tmp_path, s3_store: S3Store):
    """The sink on the real object store: no rename there, each file one PUT of its final key and the
    manifest after it. SIGKILLed three times mid-run, it still ends with every record exactly once."""
    plan = fleet("s3kill", ticks=3600)
    publish_leases(fault_broker.bootstrap, plan.leases)
    feeder = threading.Thread(target=publish_slowly, args=(fault_broker.bootstrap, plan, 30, 1.5), daemon=True)
    expected = reference_rows(plan)
    gpus = set(plan.gpu_uuids())
    lake = s3_store.url(f"s3kill-{tmp_path.name}")
    env = {**run_env(fault_broker, "s3killed", tmp_path), **s3_store.env(), "WATTMETER_USAGE_DIR": lake}
    env["WATTMETER_SINK_SECONDS"] = "0.2"
    env["WATTMETER_SINK_BATCH"] = "25"  # many small batches, so that kills land between them and inside them
    reader_env = pytest.MonkeyPatch()
    for name, value in s3_store.env().items():
        reader_env.setenv(name, value)
    rng = random.Random(9)
    worker = start_worker(env, tmp_path / "worker.log")
    sink = start_sink(env, tmp_path / "sink-0.log")
    feeder.start()  # the samples arrive over ~45 s, so the sink's writes span the kills
    kills: list[int] = []
    try:
        while sum(0 < n < len(expected) for n in kills) < 3 and len(kills) < 8:
            before = len(parquet_rows(lake, gpus))
            if before >= len(expected):
                break
            wait_for(lambda before=before: len(parquet_rows(lake, gpus)) > before, 120, "sink progress", (worker, sink))
            time.sleep(rng.uniform(0.0, 0.3))
            kills.append(len(parquet_rows(lake, gpus)))
            print(f"{time.strftime('%X')} sink kill {len(kills)} at {kills[-1]} of {len(expected)} records", flush=True)
            sink.kill()  # SIGKILL, mid-PUT or between a file and its manifest
            sink = start_sink(env, tmp_path / f"sink-{len(kills)}.log")
        wait_for(lambda: len(parquet_rows(lake, gpus)) >= len(expected), 240, "all usage rows", (worker, sink))
        time.sleep(2)  # anything duplicated would show up now
        got = parquet_rows(lake, gpus)
    finally:
        worker.stop()
        sink.stop()
        reader_env.undo()
    assert sum(0 < n < len(expected) for n in kills) >= 3, kills  # three kills landed mid-run
    assert [r for r, n in Counter(r[0] for r in got).items() if n > 1] == []  # no record twice
    assert got == expected  # to the millisecond and millijoule


def test_two_workers_give_the_same_totals_as_one(fault_broker, tmp_path):
    plan = fleet("two")
    publish_leases(fault_broker.bootstrap, plan.leases)
    publish_samples(fault_broker.bootstrap, plan)
    expected = reference_rows(plan)
    gpus = set(plan.gpu_uuids())
    env = run_env(fault_broker, "pair", tmp_path)
    services = (
        start_worker(env, tmp_path / "w1.log"),
        start_worker(env, tmp_path / "w2.log"),
        start_sink(env, tmp_path / "sink.log"),
    )
    assert rows_when_done(services, tmp_path / "pair-usage", gpus, len(expected)) == expected


def malformed(kind: int, i: int, node: str, ts_ms: int) -> bytes:
    good = {
        "schema_version": 1,
        "node_id": node,
        "boot_id": "junk",
        "seq": i,
        "ts_ms": ts_ms,
        "mono_ms": 1,
        "interval_ms": 1000,
        "gpus": [{"gpu_uuid": f"GPU-junk-{i}", "model": "x", "power_mw": 1}],
    }
    if kind == 0:
        return b"\x00\xff not json at all " + str(i).encode()
    if kind == 1:
        return json.dumps(good).encode()[:-7]  # truncated
    if kind == 2:
        return json.dumps(good).encode().replace(b'"power_mw": 1', b'"power_mw": NaN')
    if kind == 3:
        good["gpus"][0]["power_mw"] = -500
    elif kind == 4:
        good["schema_version"] = 99
    elif kind == 5:
        good["ts_ms"] = int(time.time() * 1000) + 86_400_000  # a day in the future
    elif kind == 6:
        del good["gpus"]
    elif kind == 7:
        good["seq"] = "seven"
    elif kind == 8:
        good["gpus"][0]["util_gpu_pct"] = 150
    return json.dumps(good).encode()


def test_ten_thousand_malformed_messages_go_to_the_dlq_and_leave_totals_alone(fault_broker, tmp_path):
    from kafka import KafkaConsumer, KafkaProducer

    plan = fleet("mixed", ticks=1200)
    publish_leases(fault_broker.bootstrap, plan.leases)
    expected = reference_rows(plan)
    producer = KafkaProducer(bootstrap_servers=[fault_broker.bootstrap], acks="all", linger_ms=20)
    per_node = {
        node: simulated_samples(node, plan.gpus_per_node, plan.ticks, util=plan.util, seed=plan.seed)[0]
        for node in plan.nodes
    }
    backwards_total = len(plan.nodes) * len([t for t in range(plan.ticks - 1) if t % 5 == 2])
    backwards = junk = 0
    for tick in range(plan.ticks):
        for node, samples in per_node.items():
            sample = samples[tick]
            producer.send(GPU_SAMPLES, key=node.encode(), value=sample.to_json_bytes())
            if tick % 5 == 2 and tick + 1 < plan.ticks:  # between two good ticks: a counter going back
                corrupt = json.loads(sample.to_json_bytes())
                corrupt.update(boot_id="corrupt", seq=tick, ts_ms=sample.ts_ms + 500)
                corrupt["gpus"][0]["energy_mj"] = 0
                producer.send(GPU_SAMPLES, key=node.encode(), value=json.dumps(corrupt).encode())
                backwards += 1
            for _ in range(2):
                if junk < 10_000 - backwards_total:
                    producer.send(GPU_SAMPLES, key=node.encode(), value=malformed(junk % 9, junk, node, sample.ts_ms))
                    junk += 1
    producer.flush()
    producer.close()
    bad = backwards + junk
    assert bad == 10_000
    env = run_env(fault_broker, "mixed", tmp_path)
    env["WATTMETER_CHECK_FUTURE"] = "1"  # T0 lies in the past: far-future samples are refused
    gpus = set(plan.gpu_uuids())
    services = (start_worker(env, tmp_path / "w.log"), start_sink(env, tmp_path / "sink.log"))
    assert rows_when_done(services, tmp_path / "mixed-usage", gpus, len(expected)) == expected
    consumer = KafkaConsumer(
        GPU_SAMPLES_DLQ,
        bootstrap_servers=[fault_broker.bootstrap],
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    reasons = Counter()
    entries = 0
    for message in consumer:
        headers = dict(message.headers)
        assert headers["wattmeter-source-topic"] == b"gpu.samples" and int(headers["wattmeter-source-offset"]) >= 0
        reasons[headers["wattmeter-reason"].decode().split(":")[0].split(" must")[0]] += 1
        entries += 1
    consumer.close()
    assert entries == 10_000, dict(reasons)
    assert reasons["energy counter went backwards without a reset marker"] == backwards_total
    assert len(reasons) >= 9  # every kind of fault has its own reason
