"""A consumer closed while a broker's response wakes its read task (issue 15), made deterministic.

kafka-python 3.0's stock ``KafkaNetClient.close()`` closes the transports on the caller's thread
while the IO thread is reading from them (see streams/kafka_client.py). Here a selector holds
the IO thread at the one point of the race, right after a broker connection's read wait ended
and before the read, while the consumer closes; a fetch is always in flight, so a response
comes within ``fetch_max_wait_ms``. The stock client then logs the sink's traceback; the
wattmeter client closes on the IO thread, which this hold only delays.
"""

from __future__ import annotations

import logging
import selectors
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.net.compat import KafkaNetClient

from deploy.local.kafka_broker import BrokerHandle
from streams.kafka_client import IoThreadClient, kafka_consumer

HOLD_S = 0.5  # how long the IO thread waits, at most, for a close that needs it


class Race:
    """Holds the IO thread once, right after a read wait on a socket ended, while a close runs."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.held = threading.Event()
        self.closed = threading.Event()

    def hold_if_armed(self, events: int) -> None:
        io_thread = threading.current_thread().name.startswith("kafka-io")
        if io_thread and not events & selectors.EVENT_READ and self.armed.is_set():
            self.armed.clear()
            self.held.set()
            self.closed.wait(HOLD_S)


def holding_selector(race: Race) -> type:
    class HoldingSelector(selectors.DefaultSelector):
        """A read wait ends with its io_guard dropping EVENT_READ: `modify` (a write wait stays) or `unregister`."""

        def modify(self, fileobj: Any, events: int, data: Any = None) -> Any:
            race.hold_if_armed(events)
            return super().modify(fileobj, events, data)

        def unregister(self, fileobj: Any) -> Any:
            race.hold_if_armed(0)
            return super().unregister(fileobj)

    return HoldingSelector


def racing(client_class: type, race: Race) -> type:
    class Racing(client_class):  # type: ignore[misc]
        def close(self, node_id: Any = None) -> None:
            race.armed.set()
            self.cluster.request_update()  # a metadata response is on its way too, besides any fetch's
            assert race.held.wait(10), "no broker response woke the IO thread within 10 s"
            try:
                super().close(node_id)
            finally:
                race.closed.set()

    return Racing


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kafka_logs() -> Iterator[list[logging.LogRecord]]:
    kept = Kept()
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.addHandler(kept)
    logger.setLevel(logging.INFO)
    yield kept.records
    logger.removeHandler(kept)
    logger.setLevel(level)


def close_during_a_read(bootstrap: str, client_class: type) -> None:
    race = Race()
    topic = f"race-{uuid.uuid4().hex[:8]}"
    with KafkaAdminClient(bootstrap_servers=[bootstrap]) as admin:
        admin.create_topics([NewTopic(topic, 1, 1)])
        admin.wait_for_topics([topic], timeout_ms=30_000)
    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap],
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
        kafka_client=racing(client_class, race),
        selector=holding_selector(race),
    )
    consumer.assign([TopicPartition(topic, 0)])
    assert consumer.poll(timeout_ms=1_000) == {}
    assert consumer.position(TopicPartition(topic, 0)) == 0
    consumer.poll(timeout_ms=100)  # a fetch is in flight: its (empty) answer comes within fetch_max_wait_ms
    consumer.close(autocommit=False, timeout_ms=5_000)
    assert race.held.is_set() and race.closed.is_set()


def transport_errors(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage() for r in records if r.name.startswith("kafka.net") and (r.levelno >= logging.ERROR or r.exc_info)
    ]


@pytest.mark.broker
def test_the_stock_client_closed_during_a_read_logs_the_sinks_traceback(
    kafka_broker: BrokerHandle, kafka_logs: list[logging.LogRecord]
) -> None:
    """kafka-python's bug, as the sink met it: if this fails, kafka-python fixed it (drop the workaround)."""
    close_during_a_read(kafka_broker.bootstrap, KafkaNetClient)
    failed = [r for r in kafka_logs if r.exc_info and "Error receiving network data" in r.getMessage()]
    assert failed, [r.getMessage() for r in kafka_logs]
    assert "(closed)" in failed[0].getMessage()
    assert failed[0].exc_info is not None and isinstance(failed[0].exc_info[1], AttributeError | OSError)


@pytest.mark.broker
def test_the_wattmeter_client_closes_on_the_io_thread_without_an_error(
    kafka_broker: BrokerHandle, kafka_logs: list[logging.LogRecord]
) -> None:
    close_during_a_read(kafka_broker.bootstrap, IoThreadClient)
    assert transport_errors(kafka_logs) == []
    assert [r for r in kafka_logs if r.exc_info] == []
    assert any("Closing transport" in r.getMessage() for r in kafka_logs)  # it did close the connections


@pytest.mark.broker
def test_kafka_consumer_uses_the_wattmeter_client(kafka_broker: BrokerHandle) -> None:
    consumer = kafka_consumer(bootstrap_servers=[kafka_broker.bootstrap], group_id=None)
    # kafka-python shows its network client and IO thread only as private attributes
    try:
        assert type(consumer._client) is IoThreadClient  # noqa: SLF001
        io_thread = consumer._net._io_thread  # noqa: SLF001
        assert io_thread is not None and io_thread.is_alive()
    finally:
        consumer.close()
    assert not io_thread.is_alive()  # closed, and the IO loop stopped with it
