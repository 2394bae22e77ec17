"""`rollup --follow` on the real broker, worker and sink: usage arrives through the day in batches,
and after each the hourly rows equal a full rebuild of the lake; the follower is SIGKILLed in the
middle and restarted, and still ends equal."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.kafka_sink import KafkaSampleSink
from billing.leases.service import leases_overlapping
from billing.ledger.db import Ledger
from billing.readmodel.follow import followed_cutoff
from billing.readmodel.hourly import hourly_rows
from billing.usage.reader import read_cutoff
from deploy.local.fleet import FleetPlan, fleet_samples, publish_leases
from deploy.local.pipeline import service_env, start_sink, start_worker
from schemas.leases import Lease
from tests.support.billing_fixtures import hourly_table
from tests.support.helpers import T0

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3_600_000
DAY = 24 * HOUR
BATCHES = 4


def settled(ledger: Ledger, usage_dir: Path, timeout_s: float = 90) -> dict[int, int]:
    """Wait until the sink's manifests stop moving and the follower has caught up with them."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        cutoff = read_cutoff(usage_dir)
        if cutoff != last:
            last, since = cutoff, time.monotonic()
        elif cutoff and time.monotonic() - since > 4 and followed_cutoff(ledger) == cutoff:
            return cutoff
        time.sleep(0.25)
    raise AssertionError(f"the follower did not catch up with the sink ({last} vs {followed_cutoff(ledger)})")


def start_follower(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "billing.cli", "rollup", "--follow", "--interval-s", "0.2"],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def test_the_follower_keeps_hourly_rows_equal_to_a_full_rebuild(kafka_broker, run_id, tmp_path: Path):
    plan = FleetPlan(nodes=[f"fo-{run_id}"], gpus_per_node=2, start_ms=T0, ticks=3 * 360 + 20, interval_ms=10_000)
    g0, g1 = plan.gpu_uuids()
    db = f"sqlite:///{tmp_path}/billing.db"
    tenant = f"t-{run_id}"
    publish_leases(
        kafka_broker.bootstrap,
        [Lease(f"f0-{run_id}", tenant, g0, T0, T0 + 2 * HOUR), Lease(f"f1-{run_id}", tenant, g1, T0 + HOUR, None)],
        db,
    )
    usage_dir = tmp_path / "usage"
    env = service_env(
        kafka_broker.bootstrap,
        f"fo-{run_id}",
        usage_dir,
        tmp_path / "state",
        WATTMETER_CHECK_FUTURE="0",
        WATTMETER_SINK_SECONDS="1",
    )
    follower_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WATTMETER_BILLING_DB": db,
        "WATTMETER_USAGE_DIR": str(usage_dir),
    }
    ledger = Ledger(db)

    def ours(rows: list[tuple]) -> list[tuple]:
        """This fleet's rows of the day (the session's broker is shared: other tests' GPUs are in the lake too)."""
        return sorted(row for row in rows if row[1] in (g0, g1) and T0 <= row[4] < T0 + DAY)

    samples = fleet_samples(plan)
    per_batch = -(-plan.ticks // BATCHES)
    services = (start_worker(env, tmp_path / "worker.log"), start_sink(env, tmp_path / "sink.log"))
    follower = start_follower(follower_env, tmp_path / "follow.log")
    sink = KafkaSampleSink(kafka_broker.bootstrap)
    try:
        for batch in range(BATCHES):
            for sample in itertools.islice(samples, per_batch):
                sink.send(sample)
            sink.flush()
            if batch == 1:  # the follower dies at once, mid-step or between steps
                follower.send_signal(signal.SIGKILL)
                follower.wait(timeout=30)
                time.sleep(3)  # the sink goes on writing meanwhile
                follower = start_follower(follower_env, tmp_path / "follow.log")
            settled(ledger, usage_dir)
            with ledger.transaction() as session:
                leases = leases_overlapping(session, T0, T0 + DAY)
            rebuilt, _ = hourly_rows(usage_dir, T0, T0 + DAY, leases)
            assert ours(rebuilt), "no usage yet"
            assert ours(hourly_table(ledger)) == ours(rebuilt), f"after batch {batch}"
        hours = {row[4] for row in ours(hourly_table(ledger))}
        assert {T0, T0 + HOUR, T0 + 2 * HOUR} <= hours  # the day's three hours, each rebuilt as files came
    finally:
        sink.close()
        follower.terminate()
        follower.wait(timeout=30)
        for service in services:
            service.stop()
        ledger.dispose()
    log = (tmp_path / "follow.log").read_text()
    assert "Traceback" not in log and log.count("rollup follow: following") == 2
