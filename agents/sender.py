"""Drains the spool to Kafka, in order, deleting rows only once Kafka acknowledged them.

Kafka's idempotent producer keeps order within a partition through its own retries.
A batch is handed to the producer and the sender waits until every message in it has
completed, however long an outage lasts; only then does it decide: the acknowledged
prefix is deleted from the spool, and from the first failure on the batch is sent
again (later messages of the same partition fail with it, so order is kept).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agents.metrics import AgentMetrics
from agents.spool import Spool
from schemas.topics import GPU_SAMPLES

log = logging.getLogger(__name__)


class SpoolSender:
    def __init__(
        self,
        spool: Spool,
        producer_config: dict[str, Any],
        metrics: AgentMetrics,
        topic: str = GPU_SAMPLES,
        batch_rows: int = 5000,
    ) -> None:
        self.spool = spool
        self.config = producer_config
        self.metrics = metrics
        self.topic = topic
        self.batch_rows = batch_rows
        self._producer = None

    def _ensure_producer(self):
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(**self.config)
        return self._producer

    def send_batch(self) -> int:
        """Send the oldest rows once; returns how many were acknowledged (0: nothing to do or failure)."""
        rows = self.spool.peek(self.batch_rows)
        if not rows:
            return 0
        producer = self._ensure_producer()
        began = time.monotonic()
        futures = []
        for row in rows:
            try:
                futures.append(producer.send(self.topic, key=row.key, value=row.value))
            except Exception as exc:  # metadata not available within max_block_ms: broker down
                log.warning("kafka send failed (%s); %d samples stay spooled", exc, len(rows))
                break
        while any(not f.is_done for f in futures):
            producer.flush(timeout=5)
        acked = 0
        for future in futures:
            if future.failed():
                self.metrics.send_errors.inc()
                log.warning("kafka did not acknowledge a sample (%s); resending from there", future.exception)
                break
            acked += 1
        if acked:
            self.spool.ack(rows[acked - 1].row_id)
            self.metrics.samples_sent.inc(acked)
            self.metrics.send_latency.observe(time.monotonic() - began)
        self.metrics.spool_rows.set(self.spool.pending_rows)
        self.metrics.spool_bytes.set(self.spool.pending_bytes)
        return acked

    def run(self, stop: threading.Event, drain_timeout_s: float = 20) -> None:
        """Send until `stop`; then keep draining for up to `drain_timeout_s` (clean shutdown)."""
        backoff = 0.2
        while not stop.is_set():
            try:
                sent = self.send_batch()
            except Exception as exc:  # no broker reachable yet (NoBrokersAvailable, timeouts): keep spooling
                log.warning(
                    "kafka unavailable (%s); %d samples spooled, retrying in %.1f s",
                    exc,
                    self.spool.pending_rows,
                    backoff,
                )
                self._close_producer()
                sent = 0
            if sent:
                backoff = 0.2
                continue
            if self.spool.pending_rows:
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                self.spool.has_rows.wait(0.5)
        deadline = time.monotonic() + drain_timeout_s
        while self.spool.pending_rows and time.monotonic() < deadline:
            try:
                if not self.send_batch():
                    time.sleep(0.2)
            except Exception:
                log.exception("kafka producer failed while draining")
                break
        if self.spool.pending_rows:
            log.warning(
                "stopping with %d samples still spooled; they are sent at the next start", self.spool.pending_rows
            )
        self._close_producer()

    def _close_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:
                log.exception("closing the kafka producer failed")
            self._producer = None
