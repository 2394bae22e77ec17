"""A broker outage of minutes on the real broker, with real agents, the worker and the sink.

The broker of this module is stopped for OUTAGE_S while three agent processes (simulated
GPUs, wall clock), the Faust worker and the Parquet sink run; the sink is stopped and
started again in the middle of it (the new one logs JSON lines). Then the broker starts
again on the same data and port. Nothing may exit, no log may hold a traceback, the worker's and the sinks' logs
(files, not terminals) hold no control character and say the outage in three kinds of
lines, every node's samples are on gpu.samples in seq order with no copy, the DLQ is
empty, and the Parquet equals the rollup of the same samples in one undisturbed process,
to the millisecond and millijoule.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from deploy.local.fleet import publish_leases
from deploy.local.kafka_broker import create_topics, start_jar_broker
from deploy.local.pipeline import ServiceProcess, service_env, start_sink, start_worker, wait_for
from schemas.leases import GpuLeaseTimeline, Lease
from schemas.logs import NOISE, JsonFormatter, KafkaNoiseFilter, TextFormatter
from schemas.samples import NodeSample
from schemas.topics import GPU_SAMPLES, GPU_SAMPLES_DLQ
from schemas.validate import parse_sample
from streams.broker_watch import BrokerWatch, parse_bootstrap
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from tests.streams.test_streams_faults import COMPARED, messages_in, parquet_rows

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = 150  # more than two "still away" reminders, more than IDLE_CLOSE_MS
SINK_RESTART_AT_S = 30  # the sink is stopped and a new one started this far into the outage
NODES = 3
GPUS = 2
INTERVAL_MS = 250
WINDOW_MS = 10_000
# Shorter than the outage: a worker that took the outage's silence for dead hosts would
# close every node's windows during it, and the late samples would become adjustments.
IDLE_CLOSE_MS = 100_000
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
LOST = "Kafka broker at {} lost"
AWAY = "Kafka broker at {} still away after"
BACK = "Kafka broker at {} is back after"


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def listener(port: int = 0) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    return server


def test_broker_watch_lost_once_reminders_once_a_minute_back_once():
    """A real port closed for 3 m 20 s on a manual clock, probed every second."""
    kept = Kept()
    logger = logging.getLogger("test.broker-watch")
    logger.addHandler(kept)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    server = listener()
    port = server.getsockname()[1]
    clock = ManualClock()
    watch = BrokerWatch(f"127.0.0.1:{port}", "the test", clock=clock, logger=logger)
    assert watch.check() and not watch.away and kept.records == []
    server.close()
    assert not watch.check() and not watch.away and kept.records == []  # one failure is not an outage yet
    for _ in range(200):
        clock.now += 1
        watch.check()
    assert watch.away and watch.away_within(0)
    server = listener(port)
    try:
        clock.now += 1
        assert watch.check() and not watch.away
    finally:
        server.close()
    assert watch.away_within(30) and not watch.away_within(-1)
    lines = [(r.levelname, r.getMessage().split(";")[0]) for r in kept.records]
    where = f"Kafka broker at 127.0.0.1:{port}"
    assert lines == [
        ("WARNING", f"{where} lost (connection refused)"),
        ("WARNING", f"{where} still away after 1m00s (connection refused)"),
        ("WARNING", f"{where} still away after 2m00s (connection refused)"),
        ("WARNING", f"{where} still away after 3m00s (connection refused)"),
        ("INFO", f"{where} is back after 3m21s"),
    ]
    assert [getattr(r, "event", None) for r in kept.records] == ["broker_lost"] + ["broker_away"] * 3 + ["broker_back"]
    assert watch.back_wall_ms is not None and watch.outages == 1


def record(name: str, level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, message, (), exc_info)


def test_noise_filter_drops_connection_noise_and_lets_real_errors_through():
    class KafkaConnectionError(Exception):  # named like aiokafka's: the filter goes by name
        pass

    clock = ManualClock()
    server = listener()
    port = server.getsockname()[1]
    watch = BrokerWatch(f"127.0.0.1:{port}", "the test", clock=clock, logger=logging.getLogger("test.quiet"))
    noise = KafkaNoiseFilter()
    watch.noise_filter, noise.watch = noise, watch
    connect = "Unable connect to node with id 1: [Errno 111] Connect call failed ('127.0.0.1', 9)"
    overlap = "Timer commit is overlapping (interval=1.0 runtime=104.1)"
    assert not noise.filter(record("aiokafka.conn", logging.ERROR, connect))
    assert not noise.filter(record("kafka.net.manager", logging.ERROR, "Connection failed: KafkaConnectionError: 111"))
    assert not noise.filter(record("faust.x", logging.ERROR, "Committing raised", KafkaConnectionError("closed")))
    assert noise.filter(record("faust.x", logging.ERROR, "Committing raised", ValueError("a bug")))
    assert noise.filter(record("aiokafka.consumer", logging.ERROR, "Topic x is not authorized"))
    assert noise.filter(record("streams.app", logging.ERROR, connect))  # ours are never filtered
    assert noise.filter(record("mode.timers", logging.WARNING, overlap))  # no outage: a real overlap
    assert noise.suppressed == 3
    server.close()
    watch.check()
    watch.check()  # lost
    assert not noise.filter(record("mode.timers", logging.WARNING, overlap))
    assert not noise.filter(record("aiokafka.consumer", logging.WARNING, "Heartbeat failed for group x"))
    assert noise.filter(record("aiokafka.consumer", logging.CRITICAL, "anything critical"))


def test_formatters_write_one_line_per_record_without_control_characters():
    spinner = "starting\x1b[?25l\x08\x1b[?25h done\r"
    text = TextFormatter().format(record("faust.worker", logging.INFO, spinner))
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text) and text.endswith("\\x1b[?25h done\\x0d")
    try:
        raise ValueError("two\nlines\x1b[0m")
    except ValueError as exc:
        failed = record("streams.app", logging.ERROR, "it failed:\ttab", exc)
        failed.exc_info = sys.exc_info()
    line = JsonFormatter("worker").format(failed)
    assert "\n" not in line and not re.search(r"[\x00-\x1f\x7f]", line)
    entry = json.loads(line)
    assert entry["service"] == "worker" and entry["level"] == "ERROR" and entry["logger"] == "streams.app"
    assert entry["message"] == "it failed:\ttab" and "ValueError: two\nlines\x1b[0m" in entry["exc"]
    assert entry["ts"].endswith("Z")


def test_bootstrap_syntax():
    assert parse_bootstrap("a:1, kafka://b.example:9093,[::1]:9094,c") == [
        ("a", 1),
        ("b.example", 9093),
        ("::1", 9094),
        ("c", 9092),
    ]
    for bad in ("", "a:", "a:0", "a:70000", "a b:1", "a:1,,b:2", "a:x"):
        with pytest.raises(ValueError, match="bad Kafka bootstrap address"):
            parse_bootstrap(bad)


@pytest.mark.parametrize("command", ["worker", "sink"])
def test_a_bad_address_is_one_line_and_exit_2(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:90a92")
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", command, "--usage-dir", str(tmp_path), "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "wattmeter-streams: bad Kafka bootstrap address '127.0.0.1:90a92' in '127.0.0.1:90a92': "
        "expected host:port[,host:port...]"
    ]


@pytest.fixture(scope="module")
def outage_broker(tmp_path_factory):
    """A broker of this module's own: stopping it disturbs no other test."""
    broker = start_jar_broker(tmp_path_factory.mktemp("outage-kafka"), 90)
    create_topics(broker.bootstrap)
    yield broker
    broker.stop()


def start_agent(env: dict[str, str], bootstrap: str, node: str, spool: Path, log: Path) -> ServiceProcess:
    args = ["-m", "agents.cli", "--backend", "simulated", "--gpus", str(GPUS), "--node-id", node]
    args += ["--interval-ms", str(INTERVAL_MS), "--bootstrap", bootstrap, "--spool-dir", str(spool)]
    return ServiceProcess(f"agent {node}", args, env, log)


def topic_messages(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes]]:
    """(partition, offset, key, value) of every message on `topic`, each partition in order."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        found = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                found += [(r.partition, r.offset, r.key, r.value) for r in records]
        return sorted(found)
    finally:
        consumer.close()


def undisturbed_rows(per_node: dict[str, list[tuple[int, NodeSample]]], leases: list[Lease]) -> list[tuple]:
    """The same rollup over the same messages, in order, in one process, no outage."""
    index = LeaseIndex()
    for lease in leases:
        index.put(GpuLeaseTimeline(lease.gpu_uuid, [lease]))
    config = RollupConfig(window_ms=WINDOW_MS, idle_close_ms=IDLE_CLOSE_MS)
    rows = []
    for node, samples in per_node.items():
        rollup = NodeRollup(config, index)
        state = new_state(node)
        for offset, sample in samples:
            rows += [tuple(r.to_dict()[c] for c in COMPARED) for r in rollup.apply(state, sample, offset).records]
    return sorted(rows)


def assert_running(services: tuple[ServiceProcess, ...]) -> None:
    for service in services:
        assert service.running(), f"{service.name} exited during the outage:\n{service.log_tail()}"


def cpu_s(service: ServiceProcess) -> float:
    """CPU seconds (user + system) the service's process has used so far."""
    fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace") if path.exists() else ""


@pytest.mark.broker
@pytest.mark.timeout(480)
def test_services_ride_out_a_broker_outage_of_minutes(outage_broker, tmp_path):
    broker = outage_broker
    bootstrap = broker.bootstrap
    nodes = [f"outage-{i}" for i in range(NODES)]
    gpus = {f"GPU-sim-{node}-{g:02d}" for node in nodes for g in range(GPUS)}
    t0 = time.time_ns() // 1_000_000
    # every node's first GPU leased throughout; its second from 40 s in to the middle of the
    # outage, so lease boundaries fall before, during and after it
    leases = [
        Lease(f"l-{node}-0", f"tenant-{i % 2}", f"GPU-sim-{node}-00", t0, t0 + 3_600_000)
        for i, node in enumerate(nodes)
    ]
    leases += [
        Lease(f"l-{node}-1", "tenant-2", f"GPU-sim-{node}-01", t0 + 40_000 + 1_234 * i, t0 + 140_000 + 777 * i)
        for i, node in enumerate(nodes)
    ]
    publish_leases(bootstrap, leases, now_ms=t0)
    usage_dir = tmp_path / "usage"
    env = service_env(
        bootstrap,
        "outage",
        usage_dir,
        tmp_path / "state",
        WATTMETER_WINDOW_MS=str(WINDOW_MS),
        WATTMETER_IDLE_CLOSE_MS=str(IDLE_CLOSE_MS),
        WATTMETER_SINK_SECONDS="0.5",
        WATTMETER_SESSION_TIMEOUT_S="6",
    )
    logs = tmp_path / "logs"
    worker = start_worker(env, logs / "worker.log")
    sink = start_sink(env, logs / "sink-1.log")
    agents = [start_agent(env, bootstrap, node, tmp_path / f"spool-{node}", logs / f"{node}.log") for node in nodes]
    everyone = (worker, sink, *agents)
    try:
        # the pipeline flows: usage rows in Parquet before the outage
        wait_for(lambda: len(parquet_rows(usage_dir, gpus)) >= 2 * len(gpus), 120, "rows before the outage", everyone)
        broker.stop()
        outage_began = time.monotonic()
        worker_cpu = cpu_s(worker)
        wait_for(lambda: LOST.format(bootstrap) in log_text(sink.log_path), 60, "the sink to see the outage", everyone)
        while time.monotonic() - outage_began < SINK_RESTART_AT_S:
            assert_running(everyone)
            time.sleep(1)
        # the sink stops cleanly during the outage, and a new one waits for the broker
        assert sink.stop() == 0, sink.log_tail()
        sink = start_sink(dict(env, WATTMETER_LOG_FORMAT="json"), logs / "sink-2.log")
        everyone = (worker, sink, *agents)
        while time.monotonic() - outage_began < OUTAGE_S:
            assert_running(everyone)
            time.sleep(1)
        worker_cpu = cpu_s(worker) - worker_cpu
        broker.start()  # same data, same port
        back_ms = time.time_ns() // 1_000_000
        for service in (worker, sink):
            wait_for(
                lambda s=service: BACK.format(bootstrap) in log_text(s.log_path), 60, f"{service.name} back", everyone
            )
        # fresh samples flow through again: a window that began after the broker was back
        wait_for(
            lambda: any(row[5] >= back_ms for row in parquet_rows(usage_dir, gpus)),
            120,
            "a window after the outage in Parquet",
            everyone,
        )
        for agent in agents:
            agent.process.send_signal(signal.SIGTERM)
        for agent in agents:
            assert agent.process.wait(60) == 0, agent.log_tail()
        messages = topic_messages(bootstrap, GPU_SAMPLES)
        per_node: dict[str, list[tuple[int, NodeSample]]] = {node: [] for node in nodes}
        for _, offset, key, value in messages:
            if key is not None and key.decode() in per_node:
                per_node[key.decode()].append((offset, parse_sample(value, None)))
        expected = undisturbed_rows(per_node, leases)
        wait_for(lambda: len(parquet_rows(usage_dir, gpus)) >= len(expected), 120, "every usage row", (worker, sink))
        time.sleep(2)  # a copy would show up now
    finally:
        for service in everyone:
            service.stop()
    worker_rc = worker.process.returncode
    got = parquet_rows(usage_dir, gpus)

    # every node's samples: one boot, seq 0, 1, 2, ... in topic order, no copy, none missing
    for node, samples in per_node.items():
        boots: dict[str, list[int]] = {}
        for _, sample in samples:
            boots.setdefault(sample.boot_id, []).append(sample.seq)
        assert len(boots) == 1, (node, list(boots))
        seqs = next(iter(boots.values()))
        copies = [seq for seq, n in Counter(seqs).items() if n > 1]
        assert copies == [], f"{node}: {len(copies)} samples on the topic twice, e.g. {copies[:5]}"
        assert seqs == list(range(len(seqs))), f"{node}: samples out of seq order"
        assert len(seqs) > OUTAGE_S * 1000 // INTERVAL_MS  # the outage's samples are there
    assert messages_in(bootstrap, GPU_SAMPLES_DLQ) == 0
    assert [r for r, n in Counter(r[0] for r in got).items() if n > 1] == []  # no record twice
    assert got == expected  # to the millisecond and millijoule
    assert sum(r[6] for r in got) > 0 and sum(r[8] for r in got) > 0  # busy time and energy

    # the logs: no traceback anywhere; the services' logs clean and saying the outage
    assert worker_rc == 0
    for path in sorted(logs.glob("*.log")):
        assert "Traceback" not in log_text(path), f"{path.name}:\n{log_text(path)[-3000:]}"
    service_logs = {name: log_text(logs / name) for name in ("worker.log", "sink-1.log", "sink-2.log")}
    for name, text in service_logs.items():
        bad = sorted({f"{c!r}" for c in CONTROL.findall(text)})
        assert bad == [], f"{name} holds control characters {bad}"
        noise = [line for line in text.splitlines() if NOISE.search(line) and "wattmeter.broker" not in line]
        assert noise == [], f"{name}: Kafka client noise got through: {noise[:5]}"
        print(f"--- {name}: {len(text.splitlines())} lines\n{text}")
    for name in ("worker.log", "sink-2.log"):  # both waited through the whole outage (sink-2 from 30 s in)
        text = service_logs[name]
        assert text.count(LOST.format(bootstrap)) == 1, name
        assert text.count(BACK.format(bootstrap)) == 1, name
        reminders = text.count(AWAY.format(bootstrap))
        assert 1 <= reminders <= OUTAGE_S // 60, (name, reminders)
    assert service_logs["sink-1.log"].count(LOST.format(bootstrap)) == 1
    # JSON lines: one object a line, the outage lines tagged for a log shipper
    entries = [json.loads(line) for line in service_logs["sink-2.log"].splitlines()]
    assert all({"ts", "level", "logger", "service", "message"} <= set(e) and e["service"] == "sink" for e in entries)
    events = [e["event"] for e in entries if "event" in e]
    assert events[0] == "broker_lost" and events[-1] == "broker_back" and set(events[1:-1]) == {"broker_away"}
    samples = sum(len(s) for s in per_node.values())
    print(json.dumps({"rows": len(got), "samples": samples, "worker_cpu_s_during_outage": round(worker_cpu, 1)}))
