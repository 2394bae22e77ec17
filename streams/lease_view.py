"""Adapter: a local, always-current view of the compacted `gpu.leases` topic.

Every worker needs every GPU's leases, whichever sample partitions it owns, so the
view reads all partitions of `gpu.leases` itself (no consumer group), catches up to
the end before the worker starts processing samples, then follows new timelines in a
background thread. A broker outage, at start or later, is waited out quietly (the
process's BrokerWatch says it in the log); a topic that is missing is an error.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from schemas.topics import GPU_LEASES
from schemas.validate import InvalidMessage, parse_lease_timeline
from streams.broker_watch import BrokerWatch
from streams.leases import LeaseIndex

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0
ERROR_EVERY_S = 60.0  # an unexpected poll failure is logged at most this often


class LeaseView:
    def __init__(
        self,
        bootstrap: str,
        index: LeaseIndex | None = None,
        topic: str = GPU_LEASES,
        watch: BrokerWatch | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.index = index or LeaseIndex()
        self.watch = watch
        self.rejected = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key:
                self.index.forget(key.decode())
            return
        try:
            self.index.put(parse_lease_timeline(value))
        except InvalidMessage as exc:
            self.rejected += 1
            log.error("ignoring bad lease timeline for key %r: %s", key, exc.reason)

    def start(self, timeout_s: float = 60, stop: threading.Event | None = None) -> bool:
        """Catch up to the end of the topic, then follow it in the background. Waits for the
        broker as long as it is away (`stop` ends the wait: False); RuntimeError if the topic
        does not exist or cannot be read to its end within `timeout_s` of a reachable broker."""
        from kafka.errors import KafkaError

        stop = stop or self._stop
        backoff = 1.0
        while True:
            if self.watch is not None and not self.watch.wait_until_up(stop):
                return False
            try:
                consumer = self._consumer_caught_up(timeout_s)
            except KafkaError as exc:  # the broker went away meanwhile, or is still starting
                log.debug("lease view could not catch up yet: %r", exc)
                if self.watch is not None:
                    self.watch.nudge()
                if stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            break
        log.info("lease view caught up: %d GPUs with lease timelines", len(self.index))
        self._consumer = consumer
        self._thread = threading.Thread(target=self._follow, name="lease-view", daemon=True)
        self._thread.start()
        return True

    def _consumer_caught_up(self, timeout_s: float) -> Any:
        from kafka import TopicPartition

        from streams.kafka_client import kafka_consumer

        consumer = kafka_consumer(  # closes on its IO thread: see streams/kafka_client.py
            bootstrap_servers=self.bootstrap.split(","),
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=1000,
            reconnect_backoff_max_ms=1000,  # back within a second of the broker
            bootstrap_timeout_ms=10_000,
        )
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise RuntimeError(f"topic {self.topic} does not exist on {self.bootstrap}: provision the topics first")
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            while any(consumer.position(tp) < end[tp] for tp in tps):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not read {self.topic} to its end within {timeout_s} s")
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        self._apply(record.key, record.value)
        except BaseException:
            consumer.close(timeout_ms=5_000)
            raise
        return consumer

    def _follow(self) -> None:
        from kafka.errors import KafkaError

        assert self._consumer is not None
        backoff = 0.5
        last_error = 0.0
        while not self._stop.is_set():
            try:
                for records in self._consumer.poll(timeout_ms=500).values():
                    for record in records:
                        self._apply(record.key, record.value)
                backoff = 0.5
                continue
            except (KafkaError, OSError) as exc:  # an outage: the watch says it, once
                log.debug("lease view poll failed: %r", exc)
                if self.watch is not None:
                    self.watch.nudge()
            except Exception as exc:  # not the broker: say it, once a minute at most, and go on
                if time.monotonic() - last_error >= ERROR_EVERY_S:
                    last_error = time.monotonic()
                    log.error("lease view poll failed: %r; retrying", exc)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close(timeout_ms=5_000)  # bounded, even during an outage
