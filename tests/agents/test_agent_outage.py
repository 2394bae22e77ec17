"""The agent through a broker outage of over a minute, on a broker of this module's own (stopping
it disturbs no other test): one producer throughout, every sample once and in order, and an
operator's log of three kinds of line (lost, still away once a minute, back), no traceback."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.local.kafka_broker import BrokerHandle, create_topics, start_jar_broker
from tests.agents.test_agent_kafka import assert_in_order, node_samples, spool_seqs, start_agent

pytestmark = pytest.mark.broker

LOST = "kafka unreachable at "
STILL = "kafka still unreachable at "
BACK = "kafka reachable again after "


@pytest.fixture(scope="module")
def outage_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    broker = start_jar_broker(tmp_path_factory.mktemp("outage-kafka"), 90)
    create_topics(broker.bootstrap)
    yield broker
    broker.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:.0f} s; agent log:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def lines(log: Path, marker: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if marker in line]


def assert_quiet(log: Path) -> None:
    text = log.read_text()
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    chatter = [line for line in text.splitlines() if re.search(r" (WARNING|ERROR) kafka\.", line)]
    assert chatter == [], chatter[:5]  # kafka-python's connection errors are held back


def test_agent_rides_out_a_long_outage_with_one_producer_and_three_kinds_of_line(
    outage_broker: BrokerHandle, run_id: str, tmp_path: Path
) -> None:
    node = f"long-{run_id}"
    log = tmp_path / "agent.log"
    agent = start_agent(outage_broker.bootstrap, node, tmp_path / "spool", log, interval_ms=100)
    try:
        assert len(node_samples(outage_broker.bootstrap, node, 20)) >= 20
        outage_broker.stop()
        stopped = time.monotonic()
        wait_until(lambda: bool(lines(log, LOST)), 60, "'unreachable' line", log)
        wait_until(lambda: bool(lines(log, STILL)), 150, "'still unreachable' line", log)  # a minute after
        outage_broker.restart()  # same port, same data
        back = time.monotonic()
        wait_until(lambda: bool(lines(log, BACK)), 120, "'reachable again' line", log)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
    assert spool_seqs(tmp_path / "spool") == []
    samples = node_samples(outage_broker.bootstrap, node, 20)
    (seqs,) = assert_in_order(samples).values()
    away_s = back - stopped
    assert seqs == list(range(len(seqs))) and len(seqs) > away_s * 5  # each once, in order: no late copy
    assert_quiet(log)
    assert len(lines(log, LOST)) == 1 and len(lines(log, BACK)) == 1
    assert 1 <= len(lines(log, STILL)) <= away_s / 60 + 1
    (lost,) = lines(log, LOST)
    assert f"{LOST}{outage_broker.bootstrap} (" in lost and re.search(r"; spooling \(\d+ samples pending\)$", lost)
    assert re.search(r"after \d+ s \(.*\); \d+ samples pending$", lines(log, STILL)[0])
    (recovered,) = lines(log, BACK)
    drained = int(re.search(r"; (\d+) samples drained$", recovered).group(1))  # type: ignore[union-attr]
    assert drained >= away_s * 5  # the backlog of the outage (at 10 samples a second)


def test_sigterm_while_the_broker_is_away_exits_cleanly_and_the_next_start_sends_the_rest(
    outage_broker: BrokerHandle, run_id: str, tmp_path: Path
) -> None:
    """The drain cannot finish: the agent gives up on the batch in flight at its deadline
    (without a traceback, without kafka-python complaining at exit) and keeps the rows."""
    node = f"term-{run_id}"
    spool = tmp_path / "spool"
    first_log, second_log = tmp_path / "agent1.log", tmp_path / "agent2.log"
    agent = start_agent(outage_broker.bootstrap, node, spool, first_log)
    try:
        assert len(node_samples(outage_broker.bootstrap, node, 20)) >= 20
        outage_broker.stop()
        wait_until(lambda: bool(lines(first_log, LOST)), 60, "'unreachable' line", first_log)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, first_log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
        outage_broker.restart()
    assert_quiet(first_log)
    left = spool_seqs(spool)
    assert left and "samples still spooled; they are sent at the next start" in first_log.read_text()
    agent = start_agent(outage_broker.bootstrap, node, spool, second_log)
    try:
        wait_until(lambda: not spool_seqs(spool) or spool_seqs(spool)[0][0] != left[0][0], 60, "drain", second_log)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
    assert_quiet(second_log)
    by_boot = assert_in_order(node_samples(outage_broker.bootstrap, node, len(left)))
    assert len(by_boot) == 2 and {s for _, s in left} <= set(by_boot[left[0][0]])
