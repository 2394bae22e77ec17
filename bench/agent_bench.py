"""Node agent figures: CPU per tick (8 simulated GPUs), resident memory, and spool drain
rate to the real broker, each beside a bare kafka-python producer measured in the same run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from agents.backends.simulated import SimulatedBackend
from agents.clock import SimulatedClock
from agents.kafka_sink import producer_config
from agents.metrics import AgentMetrics
from agents.sampler import Sampler
from agents.sender import SpoolSender
from agents.spool import Spool
from bench.results import BenchResult
from deploy.local.fleet import FleetPlan, fleet_samples

ROOT = Path(__file__).resolve().parents[1]
START_MS = 1_793_750_400_000  # 2026-11-04T00:00:00Z


def _messages(count: int, node: str) -> list[tuple[bytes, bytes, int]]:
    """`count` samples of one simulated 8-GPU node, with their timestamps for the spool."""
    plan = FleetPlan(nodes=[node], gpus_per_node=8, start_ms=START_MS, ticks=count, seed=1)
    return [(s.node_id.encode(), s.to_json_bytes(), s.ts_ms) for s in fleet_samples(plan)]


def _bare_send(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, int]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for a bare kafka-python producer loop sending `messages`."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**producer_config(bootstrap))
    wall, cpu = time.perf_counter(), time.process_time()
    for key, value, _ in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    producer.close()
    return wall, cpu


def tick_cpu(bootstrap: str, ticks: int = 3000) -> BenchResult:
    """CPU per tick: read 8 GPUs, build and encode the sample, commit it to the spool (fsync)."""
    with tempfile.TemporaryDirectory() as work:
        spool = Spool(Path(work) / "s.sqlite3")
        sampler = Sampler(SimulatedBackend(gpus=8, node_id="cpu", seed=1), SimulatedClock(START_MS), "cpu", 1000)
        began = time.process_time()
        for _ in range(ticks):
            sample = sampler.tick()
            spool.append(b"cpu", sample.to_json_bytes(), sample.ts_ms)
            sampler.clock.sleep_until_mono(sampler.clock.mono_ms() + 1000)
        per_tick_ms = (time.process_time() - began) * 1000 / ticks
        spool.close()
    _, bare_cpu = _bare_send(bootstrap, "gpu.samples", _messages(ticks, f"bench-cpu-{uuid.uuid4().hex[:6]}"))
    return BenchResult(
        "agent_cpu_ms_per_tick_8_gpus",
        round(per_tick_ms, 4),
        "ms CPU/tick",
        "bare kafka-python producer: CPU per send of the same message",
        round(bare_cpu * 1000 / ticks, 4),
        "< 1 ms (0.1 % of a core at 1 Hz)",
    )


def _rss_kib(code: str) -> int:
    """Peak resident memory of a fresh Python running `code` (it prints nothing)."""
    script = code + "\nprint(open('/proc/self/status').read())"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    ).stdout
    for line in out.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in the output of the memory probe: {out[-500:]}")


def agent_memory(bootstrap: str) -> BenchResult:
    agent = textwrap.dedent(f"""
        import tempfile, threading
        from pathlib import Path
        from agents.config import AgentConfig
        from agents.daemon import AgentDaemon
        from agents.clock import SimulatedClock
        config = AgentConfig(node_id="mem", backend="simulated", gpus=8, spool_dir=Path(tempfile.mkdtemp()),
                             kafka={{"bootstrap_servers": "{bootstrap}"}})
        daemon = AgentDaemon(config, clock=SimulatedClock({START_MS}))
        daemon.run(ticks=600)
    """)
    bare = textwrap.dedent(f"""
        from kafka import KafkaProducer
        p = KafkaProducer(bootstrap_servers=["{bootstrap}"], acks="all", compression_type="lz4")
        for i in range(600):
            p.send("gpu.samples", key=b"mem", value=b"x" * 2600)
        p.flush(); p.close()
    """)
    return BenchResult(
        "agent_peak_rss",
        round(_rss_kib(agent) / 1024, 1),
        "MiB",
        "bare kafka-python producer process sending 600 messages",
        round(_rss_kib(bare) / 1024, 1),
        "light: < 100 MiB",
    )


def spool_drain(bootstrap: str, backlog: int = 20_000) -> BenchResult:
    node = f"bench-drain-{uuid.uuid4().hex[:6]}"
    messages = _messages(backlog, node)
    with tempfile.TemporaryDirectory() as work:
        spool = Spool(Path(work) / "s.sqlite3")
        for start in range(0, backlog, 5000):
            spool.append_many(messages[start : start + 5000])
        sender = SpoolSender(spool, producer_config(bootstrap), AgentMetrics())
        began = time.perf_counter()
        while spool.pending_rows:
            sender.send_batch()
        drain_s = time.perf_counter() - began
        sender._close_producer()
        spool.close()
    bare_s, _ = _bare_send(bootstrap, "gpu.samples", messages)
    gpu_samples = backlog * 8
    return BenchResult(
        "agent_spool_drain_gpu_samples_per_s",
        round(gpu_samples / drain_s, 1),
        "GPU-samples/s",
        f"bare kafka-python producer loop, same {backlog} messages from memory",
        round(gpu_samples / bare_s, 1),
        ">= 50,000 GPU-samples/s (a day of 8 GPUs in < 15 s)",
    )


def run(bootstrap: str) -> list[BenchResult]:
    return [tick_cpu(bootstrap), agent_memory(bootstrap), spool_drain(bootstrap)]
