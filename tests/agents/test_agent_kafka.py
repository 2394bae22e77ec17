"""The agent daemon against a real broker: SIGTERM flush, kill -9 and restart, a broker outage,
and a SIGKILLed simulated GPU host metered across its restart by the real worker and sink.
(A broker away for over a minute: tests/agents/test_agent_outage.py.)"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.local.kafka_broker import BrokerHandle, start_jar_broker
from schemas.topics import GPU_SAMPLES

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


def start_agent(bootstrap: str, node: str, spool: Path, log: Path, interval_ms: int = 50) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agents.cli",
                "--backend",
                "simulated",
                "--gpus",
                "2",
                "--node-id",
                node,
                "--interval-ms",
                str(interval_ms),
                "--bootstrap",
                bootstrap,
                "--spool-dir",
                str(spool),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def node_samples(bootstrap: str, node: str, expect_at_least: int = 0, timeout_s: float = 60) -> list[dict]:
    """Every sample of `node` on gpu.samples, in partition order: all that the topic holds
    once it holds at least `expect_at_least` of them (or `timeout_s` has passed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None)
    deadline = time.monotonic() + timeout_s
    try:
        partitions = [TopicPartition(GPU_SAMPLES, p) for p in sorted(consumer.partitions_for_topic(GPU_SAMPLES))]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        found: list[dict] = []
        while True:
            end = consumer.end_offsets(partitions)
            while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    found += [json.loads(r.value) for r in records if r.key == node.encode()]
            if len(found) >= expect_at_least or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)
    finally:
        consumer.close()


def spool_seqs(spool_dir: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(spool_dir / "spool.sqlite3")
    try:
        return [
            (json.loads(v)["boot_id"], json.loads(v)["seq"])
            for (v,) in db.execute("SELECT value FROM spool ORDER BY id")
        ]
    finally:
        db.close()


def assert_in_order(samples: list[dict]) -> dict[str, list[int]]:
    """Per boot: seqs start at 0, none missing, and none arrives after a later one
    (a resend after a lost acknowledgement may repeat the newest, which the streams dedupe)."""
    by_boot: dict[str, list[int]] = {}
    for sample in samples:
        by_boot.setdefault(sample["boot_id"], []).append(sample["seq"])
    for boot, seqs in by_boot.items():
        highest = -1
        for seq in seqs:
            assert seq <= highest + 1, f"boot {boot}: seq {seq} arrived after {highest} (a gap or a reorder)"
            highest = max(highest, seq)
        assert sorted(set(seqs)) == list(range(highest + 1))
    return by_boot


def test_sigterm_stops_and_flushes_everything(kafka_broker, run_id, tmp_path):
    node = f"term-{run_id}"
    agent = start_agent(kafka_broker.bootstrap, node, tmp_path / "spool", tmp_path / "agent.log")
    time.sleep(3)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0, (tmp_path / "agent.log").read_text()
    assert spool_seqs(tmp_path / "spool") == []  # nothing left behind
    by_boot = assert_in_order(node_samples(kafka_broker.bootstrap, node, 20))
    assert len(by_boot) == 1 and len(next(iter(by_boot.values()))) >= 20


def test_kill_9_then_restart_loses_nothing(kafka_broker, run_id, tmp_path):
    """No broker reachable: the agent spools; kill -9; restart with the broker: all of it arrives."""
    node = f"kill-{run_id}"
    spool = tmp_path / "spool"
    agent = start_agent("127.0.0.1:1", node, spool, tmp_path / "agent1.log")
    time.sleep(3)
    agent.kill()
    agent.wait(10)
    spooled = spool_seqs(spool)
    assert len(spooled) >= 20 and [s for _, s in spooled] == list(range(len(spooled)))
    first_boot = spooled[0][0]
    agent = start_agent(kafka_broker.bootstrap, node, spool, tmp_path / "agent2.log")
    time.sleep(3)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    by_boot = assert_in_order(node_samples(kafka_broker.bootstrap, node, len(spooled)))
    assert set(by_boot[first_boot]) == {s for _, s in spooled}  # every sample taken before the kill
    assert len(by_boot) == 2  # and the new boot's own


def test_broker_outage_samples_arrive_in_order(run_id, tmp_path):
    """Stop the (own, jar) broker during sampling, start it again: every seq arrives once, in order
    (one producer throughout: no late copy of the batch that was in flight when the broker went)."""
    broker = start_jar_broker(tmp_path / "kafka", 90)
    try:
        from deploy.local.kafka_broker import create_topics

        create_topics(broker.bootstrap)
        node = f"outage-{run_id}"
        agent = start_agent(broker.bootstrap, node, tmp_path / "spool", tmp_path / "agent.log")
        time.sleep(2)
        broker.stop()
        time.sleep(4)  # ~80 ticks taken while Kafka is down
        assert len(spool_seqs(tmp_path / "spool")) >= 40
        broker.restart()
        time.sleep(5)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(40) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        by_boot = assert_in_order(node_samples(broker.bootstrap, node, 150))
        (seqs,) = by_boot.values()
        assert len(seqs) >= 150 and seqs == list(range(len(seqs)))
        log = (tmp_path / "agent.log").read_text()
        assert "Traceback" not in log and "Exception ignored" not in log, log[-3000:]
    finally:
        broker.stop()


def test_simulated_host_sigkilled_and_restarted_is_metered_across_the_restart_from_its_counter(
    kafka_broker: BrokerHandle, run_id: str, tmp_path: Path
) -> None:
    """The simulated GPUs' counters run on across an agent restart (as NVML's run from driver
    load), so the real worker takes the restarted agent's first sample as it is (nothing in the
    DLQ) and meters the interval across the restart from the counter: every GPU's energy in
    Parquet is its last counter reading less its first, and its time the span between them."""
    import pyarrow.dataset as ds

    from deploy.local.pipeline import service_env, start_sink, start_worker, wait_for
    from schemas.samples import GpuReading
    from schemas.topics import GPU_SAMPLES_DLQ
    from streams import deltas

    node = f"restart-{run_id}"
    spool = tmp_path / "spool"
    usage_dir = tmp_path / "usage"
    env = service_env(
        kafka_broker.bootstrap,
        f"restart-{run_id}",
        usage_dir,
        tmp_path / "state",
        WATTMETER_SINK_SECONDS="0.5",
        WATTMETER_IDLE_CLOSE_MS="8000",  # close the windows once the host has been silent for 8 s
    )
    services = (start_worker(env, tmp_path / "worker.log"), start_sink(env, tmp_path / "sink.log"))
    try:
        agent = start_agent(kafka_broker.bootstrap, node, spool, tmp_path / "agent1.log", interval_ms=200)
        first_boot = node_samples(kafka_broker.bootstrap, node, 10)[0]["boot_id"]
        agent.kill()  # SIGKILL: no drain, no goodbye
        agent.wait(10)
        assert (spool / "simulated-gpus.json").exists()
        agent = start_agent(kafka_broker.bootstrap, node, spool, tmp_path / "agent2.log", interval_ms=200)
        wait_for(
            lambda: len({s["boot_id"] for s in node_samples(kafka_broker.bootstrap, node, 1, 5)}) == 2,
            60,
            "the restarted agent's samples",
        )
        time.sleep(2)  # a few more samples of the new boot
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        samples = node_samples(kafka_broker.bootstrap, node, 20)
        by_boot = assert_in_order(samples)
        assert list(by_boot)[0] == first_boot and len(by_boot) == 2
        unique = {(s["boot_id"], s["seq"]): s for s in samples}
        ordered = sorted(unique.values(), key=lambda s: s["ts_ms"])
        gpus = {g["gpu_uuid"] for s in ordered for g in s["gpus"]}
        assert len(gpus) == 2
        span = ordered[-1]["ts_ms"] - ordered[0]["ts_ms"]

        def parquet(gpu: str) -> tuple[int, int, int]:
            files = [str(p) for p in usage_dir.glob("date=*/*.parquet")]
            if not files:
                return (0, 0, 0)
            table = ds.dataset(files, format="parquet").to_table(
                columns=["allocated_gpu_ms", "energy_mj", "unmetered_ms"], filter=ds.field("gpu_uuid") == gpu
            )
            alloc, energy, unmetered = (sum(table[c].to_pylist()) for c in table.column_names)
            return alloc, energy, unmetered

        wait_for(lambda: all(parquet(g)[0] == span for g in gpus), 180, "every window of the host in Parquet", services)
    finally:
        for service in services:
            service.stop()
    for gpu in sorted(gpus):
        readings = [(s["ts_ms"], s["boot_id"], next(g for g in s["gpus"] if g["gpu_uuid"] == gpu)) for s in ordered]
        assert parquet(gpu) == (span, readings[-1][2]["energy_mj"] - readings[0][2]["energy_mj"], 0)
        # the interval across the restart: from the old boot's last reading to the new boot's first
        cut = next(i for i, (_, boot, _) in enumerate(readings) if boot != first_boot)
        (ts_a, _, a), (ts_b, _, b) = readings[cut - 1], readings[cut]
        assert not b["counter_reset"] and b["energy_mj"] > a["energy_mj"]
        reading = GpuReading(
            gpu, b["model"], power_mw=b["power_mw"], energy_mj=b["energy_mj"], util_gpu_pct=b["util_gpu_pct"]
        )
        _, interval = deltas.step(deltas.Cursor(ts_a, a["energy_mj"], a["power_mw"]), ts_b, reading, 30_000)
        assert interval is not None and interval.metered and interval.from_counter
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        GPU_SAMPLES_DLQ,
        bootstrap_servers=[kafka_broker.bootstrap],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    try:
        rejected = [(r.value[:200], dict(r.headers)) for r in consumer if r.key == node.encode()]
    finally:
        consumer.close()
    assert rejected == []
