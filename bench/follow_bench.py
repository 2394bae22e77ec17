"""How far behind the sink the hourly rows are: the lag from the sink's manifest moving to
`usage_hourly` holding its rows, with `rollup --follow` running as a service (a subprocess, polling
every 0.2 s), on the real broker, worker and sink. Beside it, in the same run and the same
iterations: the sink's own lag from the sample that closes a window to the manifest moving.

Each of ITERATIONS rounds publishes a minute of samples of a fresh node, then the sample that closes
it, and times (a) the closing sample to the manifest moving, (b) the manifest moving to the
follower's recorded cut-off reaching it (its rows are committed with it, in one transaction).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.api_bench import percentile
from bench.results import BenchResult
from bench.streams_bench import LATENESS_MS, START_MS, _plan, _send
from deploy.local.fleet import encoded_samples, publish_samples
from deploy.local.pipeline import service_env, start_sink, start_worker, wait_for

ITERATIONS = 20
ROOT = Path(__file__).resolve().parents[1]
MS_PER_HOUR = 3_600_000


def _moved(usage_dir: Path, before: dict[int, int]) -> dict[int, int] | None:
    from billing.usage.reader import read_cutoff

    now = read_cutoff(usage_dir)
    return now if now != before and all(now.get(p, 0) >= o for p, o in before.items()) else None


def run(bootstrap: str) -> list[BenchResult]:
    from billing.ledger.db import Ledger
    from billing.readmodel.follow import followed_cutoff
    from billing.usage.reader import read_cutoff

    work = Path(tempfile.mkdtemp(prefix="wattmeter-follow-bench-"))
    usage_dir = work / "usage"
    db = f"sqlite:///{work}/billing.db"
    Ledger(db).dispose()  # migrated before the follower starts
    env = service_env(
        bootstrap,
        f"fbench-{uuid.uuid4().hex[:6]}",
        usage_dir,
        work / "state",
        WATTMETER_CHECK_FUTURE="0",
        WATTMETER_SINK_SECONDS="1",
    )
    services = (start_worker(env, work / "worker.log"), start_sink(env, work / "sink.log"))
    follower_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WATTMETER_BILLING_DB": db,
        "WATTMETER_USAGE_DIR": str(usage_dir),
    }
    follower = subprocess.Popen(
        [sys.executable, "-m", "billing.cli", "rollup", "--follow", "--interval-s", "0.2"],
        env=follower_env,
        stdout=(work / "follow.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    ledger = Ledger(db)
    sink_lag: list[float] = []
    follow_lag: list[float] = []
    try:
        warm = _plan("fwarm" + uuid.uuid4().hex[:4], 1, 67, start_ms=START_MS - 2 * MS_PER_HOUR)
        publish_samples(bootstrap, warm)
        wait_for(lambda: bool(read_cutoff(usage_dir)), 180, "the warm-up window", services, poll_s=0.2)
        wait_for(lambda: followed_cutoff(ledger) == read_cutoff(usage_dir), 60, "the follower", services)
        for round_ in range(ITERATIONS):
            plan = _plan(
                uuid.uuid4().hex[:6], nodes=1, ticks=61 + LATENESS_MS // 1000, start_ms=START_MS + round_ * 120_000
            )
            messages = encoded_samples(plan)
            _send(bootstrap, messages[:-1])
            time.sleep(2.5)  # everything but the closing sample is processed and written
            wait_for(lambda: followed_cutoff(ledger) == read_cutoff(usage_dir), 60, "the follower", services)
            settled = read_cutoff(usage_dir)
            began = time.perf_counter()
            _send(bootstrap, messages[-1:])
            moved: dict[int, int] | None = None
            deadline = time.monotonic() + 60
            while moved is None and time.monotonic() < deadline:
                moved = _moved(usage_dir, settled)
                if moved is None:
                    time.sleep(0.005)
            if moved is None:
                raise RuntimeError("the sink's manifest did not move")
            at_manifest = time.perf_counter()
            while not all(followed_cutoff(ledger).get(p, 0) >= o for p, o in moved.items()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the follower did not catch up")
                time.sleep(0.005)
            done = time.perf_counter()
            sink_lag.append((at_manifest - began) * 1000)
            follow_lag.append((done - at_manifest) * 1000)
    finally:
        follower.terminate()
        follower.wait(10)
        for service in services:
            service.stop()
        ledger.dispose()
    baseline = "the sink's own lag, closing sample to manifest moved, same run and rounds"
    return [
        BenchResult(
            f"rollup_follow_lag_ms_{tag}",
            round(percentile(follow_lag, q), 1),
            "ms (sink manifest moved -> usage_hourly holds its rows; follower polling every 0.2 s)",
            f"{baseline}, {tag}",
            round(percentile(sink_lag, q), 1),
            "p99 < 10 s" if tag == "p99" else "",
        )
        for q, tag in ((0.50, "p50"), (0.99, "p99"))
    ]


if __name__ == "__main__":
    from bench.results import table
    from deploy.local.kafka_broker import start_broker

    broker = start_broker(Path(".wattmeter/bench-kafka"))
    try:
        print(table(run(broker.bootstrap)))
    finally:
        broker.stop()
