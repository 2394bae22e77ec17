"""Adapter: a local, always-current view of the compacted `gpu.leases` topic.

Every worker needs every GPU's leases, whichever sample partitions it owns, so the
view reads all partitions of `gpu.leases` itself (no consumer group), catches up to
the end before the worker starts processing samples, then follows new timelines in a
background thread.
"""

from __future__ import annotations

import logging
import threading
import time

from schemas.topics import GPU_LEASES
from schemas.validate import InvalidMessage, parse_lease_timeline
from streams.leases import LeaseIndex

log = logging.getLogger(__name__)


class LeaseView:
    def __init__(self, bootstrap: str, index: LeaseIndex | None = None, topic: str = GPU_LEASES) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.index = index or LeaseIndex()
        self.rejected = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = None

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

    def start(self, timeout_s: float = 60) -> None:
        """Catch up to the end of the topic, then follow it in the background."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=1000,
        )
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
        log.info("lease view caught up: %d GPUs with lease timelines", len(self.index))
        self._consumer = consumer
        self._thread = threading.Thread(target=self._follow, name="lease-view", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                for records in self._consumer.poll(timeout_ms=500).values():
                    for record in records:
                        self._apply(record.key, record.value)
            except Exception:  # keep following through broker hiccups
                log.exception("lease view poll failed; retrying")
                time.sleep(1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
