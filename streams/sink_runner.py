"""Wiring: consume `usage.records` and hand batches to the ParquetSink.

A plain kafka-python consumer rather than a Faust agent: the sink must seek each
partition to the offset in its manifest on every assignment and decide itself when
offsets count as done, which kafka-python exposes directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from typing import Any

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from lake.store import LakeLocation
from schemas.topics import USAGE_RECORDS
from schemas.usage import UsageRecord
from schemas.validate import InvalidMessage, parse_json
from streams.broker_watch import BrokerWatch
from streams.kafka_client import kafka_consumer
from streams.sink import ParquetSink

log = logging.getLogger(__name__)


DEDUPE_WINDOW = 200_000  # record ids remembered per partition
COMMIT_TIMEOUT_MS = 5_000  # the group's offsets are advisory: never wait long for them
MAX_BACKOFF_S = 10.0
POLL_TIMEOUT_MS = 500
CLOSE_TIMEOUT_MS = 5_000

Row = dict[str, Any]  # a usage record as a Parquet row
Buffered = tuple[int, Row | None]  # (offset, row, or None: a bad record, skipped but counted as read)
Buffers = dict[int, list[Buffered]]  # per partition, in offset order


class RecentIds:
    """A bounded, insertion-ordered set: the record ids a partition wrote lately.

    The worker may re-emit a closed window after a crash (at-least-once); the copy has
    the same record_id and the same key, so it lands in the same partition shortly
    after the original, well within this window.
    """

    def __init__(self, ids: list[str], limit: int = DEDUPE_WINDOW) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict((i, None) for i in ids[-limit:])

    def add(self, record_id: str) -> bool:
        """Remember `record_id`; False if it was already there (a duplicate)."""
        if record_id in self._ids:
            return False
        self._ids[record_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True


class SinkRunner:
    def __init__(
        self,
        bootstrap: str,
        root: LakeLocation,
        batch_records: int = 50_000,
        batch_seconds: float = 5.0,
        group_id: str = "wattmeter-parquet-sink",
        topic: str = USAGE_RECORDS,
        watch: BrokerWatch | None = None,
        session_timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.watch = watch
        self._own_watch = False
        self.sink = ParquetSink(root, topic)
        self.batch_records = batch_records
        self.batch_seconds = batch_seconds
        self.group_id = group_id
        self.session_timeout_ms = int(session_timeout_s * 1000)  # how soon a dead sink's partitions move
        self.topic = topic
        self.rejected = 0
        self.duplicates = 0
        self.files_written = 0
        self.recent: dict[int, RecentIds] = {}

    def _flush(self, consumer: Any, buffers: Buffers) -> None:
        """Write each partition's buffered rows (copies dropped) and advance its manifest, then
        commit the group's offsets, advisory only."""
        commits = {}
        for partition, items in sorted(buffers.items()):
            if not items:
                continue
            rows = self._new_rows(partition, items)
            self.files_written += len(self.sink.write_batch(partition, items[0][0], items[-1][0], rows))
            commits[TopicPartition(self.topic, partition)] = OffsetAndMetadata(items[-1][0] + 1, "", -1)
        buffers.clear()
        self._commit(consumer, commits)

    def _new_rows(self, partition: int, items: list[Buffered]) -> list[Row]:
        """The rows of `items` not written before (a worker's re-emitted window has the same record_id)."""
        recent = self.recent.setdefault(partition, RecentIds([]))
        rows = []
        for _, row in items:
            if row is None:
                continue
            if recent.add(row["record_id"]):
                rows.append(row)
            else:
                self.duplicates += 1
        return rows

    def _commit(self, consumer: Any, commits: dict[Any, Any]) -> None:
        try:
            consumer.commit(commits, timeout_ms=COMMIT_TIMEOUT_MS)  # advisory: the manifests are the truth
        except KafkaError as exc:  # the broker is away or the group moved on: the manifests hold
            log.debug("offset commit skipped: %r", exc)
            self._watch().nudge()

    def _watch(self) -> BrokerWatch:
        if self.watch is None:  # used as a library: a watch of its own, stopped with run()
            self.watch = BrokerWatch(self.bootstrap, "the Parquet sink").start()
            self._own_watch = True
        return self.watch

    def _connect(self, stop: threading.Event) -> Any:
        """A consumer, once the broker answers; waits (quietly, the watch says it) as long as
        it takes. None if `stop` is set first."""
        backoff = 1.0
        while self._watch().wait_until_up(stop):
            try:
                return kafka_consumer(  # closes on its IO thread: see streams/kafka_client.py
                    bootstrap_servers=self.bootstrap.split(","),
                    group_id=self.group_id,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    isolation_level="read_committed",  # only records of committed transactions
                    max_poll_records=5000,
                    fetch_max_bytes=64 * 1024 * 1024,
                    reconnect_backoff_max_ms=1000,  # back within a second of the broker
                    bootstrap_timeout_ms=10_000,
                    session_timeout_ms=self.session_timeout_ms,
                    heartbeat_interval_ms=max(1000, self.session_timeout_ms // 3),
                )
            except KafkaError as exc:  # the port answers, the broker not yet (starting up)
                log.debug("sink consumer not ready: %r", exc)
                self._watch().nudge()
                if stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        return None

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop`; rides out broker outages of any length (the watch logs them)."""
        try:
            self._run(stop)
        finally:
            if self._own_watch and self.watch is not None:
                self.watch.stop()
                self.watch = None

    def _run(self, stop: threading.Event) -> None:
        consumer = self._connect(stop)
        if consumer is None:
            return
        buffers: Buffers = defaultdict(list)
        consumer.subscribe([self.topic], listener=PartitionHandover(self, consumer, buffers))
        try:
            self._consume(consumer, buffers, stop)
            if buffers:
                self._flush(consumer, buffers)  # clean shutdown leaves nothing half-read
        finally:
            try:
                consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)  # bounded, even during an outage
            except KafkaError as exc:  # closing during an outage
                log.debug("closing the consumer: %r", exc)

    def _consume(self, consumer: Any, buffers: Buffers, stop: threading.Event) -> None:
        """Poll and buffer until `stop`, flushing a batch when it is full or old enough."""
        last_flush = time.monotonic()
        backoff = 0.5
        while not stop.is_set():
            try:
                polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except KafkaError as exc:  # an outage the client did not ride out itself
                log.debug("poll failed: %r", exc)
                self._watch().nudge()
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = 0.5
            for tp, messages in polled.items():
                buffers[tp.partition].extend((message.offset, self._row(tp, message)) for message in messages)
            full = sum(len(b) for b in buffers.values()) >= self.batch_records
            if buffers and (full or time.monotonic() - last_flush >= self.batch_seconds):
                self._flush(consumer, buffers)
                last_flush = time.monotonic()

    def _row(self, tp: Any, message: Any) -> Row | None:
        """The usage record of `message` as a Parquet row; None (counted, logged) for a bad one."""
        try:
            return UsageRecord.from_dict(parse_json(message.value)).to_dict()
        except (InvalidMessage, KeyError, TypeError) as exc:
            self.rejected += 1
            log.error("skipping bad usage record at %s-%d@%d: %s", tp.topic, tp.partition, message.offset, exc)
            return None


class PartitionHandover(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment each partition resumes at its manifest's offset, with the record ids it
    wrote lately; on revocation its unflushed rows are dropped (the next owner reads them again)."""

    def __init__(self, runner: SinkRunner, consumer: Any, buffers: Buffers) -> None:
        self.runner = runner
        self.consumer = consumer
        self.buffers = buffers

    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.buffers.pop(tp.partition, None)

    def on_partitions_assigned(self, assigned: Any) -> None:
        sink = self.runner.sink
        for tp in assigned:
            self.consumer.seek(tp, sink.recover(tp.partition))
            self.runner.recent[tp.partition] = RecentIds(sink.recent_record_ids(tp.partition, DEDUPE_WINDOW))
