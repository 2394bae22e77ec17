"""Drains the spool to Kafka, in order, deleting rows only once Kafka acknowledged them.

One producer for the life of the sender. Kafka's idempotent producer keeps a partition's
order through its own retries (kafka-python sends one batch per partition at a time when
idempotence is on, and `producer_config` sets a delivery timeout of ~25 days, so a batch
is retried, in order, however long the broker is away). The sender hands it the oldest
rows of the spool and waits until every one of them has completed, for as long as an
outage lasts: `flush` giving up after its timeout only means Kafka has not answered yet,
so the sender calls it again. It never closes a producer that still holds unacknowledged
sends (a new producer would resend them, and the old one's copies would land later,
behind newer samples of the same node). Only then does it decide: the acknowledged prefix
is deleted from the spool, and from the first failure on the rows are sent again. A
producer is replaced only when it is unusable (closed, or `MAX_FAILED_BATCHES` batches in
a row refused) with nothing in flight.

So per node the topic holds each boot's samples in seq order, each once, through broker
outages of any length. Copies are still possible in two cases, both absorbed by the
streams' dedupe: a batch in flight when the agent is killed or its SIGTERM drain runs
out of time is sent again by the next start (right after the copies of it that may have
landed), and a send that Kafka refuses with a non-retriable error while later ones of the
same batch succeed (logged).

Logging: kafka-python logs every refused connection, several lines a second while a
broker is away. Those records are held back (`KafkaLogQuieter`; set the `kafka` logger to
INFO or DEBUG to see them) and the sender says what matters: one WARNING when Kafka stops
answering ("kafka unreachable at HOST:PORT (last error); spooling (N samples pending)"),
at most one a minute while it stays away ("kafka still unreachable ... after N s; N
samples pending"), and one INFO once it is back and the backlog is sent ("kafka reachable
again after N s; M samples drained"). No traceback for an unreachable broker.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from agents.metrics import AgentMetrics
from agents.spool import Spool, SpoolRow
from schemas.topics import GPU_SAMPLES

log = logging.getLogger(__name__)

LOST_AFTER_S = 5.0  # no acknowledgement for this long: Kafka is unreachable
REPORT_EVERY_S = 60.0  # at most one "still unreachable" line per this many seconds
POLL_S = 0.5  # how often a wait for acknowledgements looks at the clock and the stop event
MAX_FAILED_BATCHES = 3  # batches in a row with a refused send and nothing acknowledged: new producer


class KafkaLogQuieter(logging.Filter):
    """Holds back kafka-python's own warnings and errors (connection refused, metadata
    refresh failed, retrying...) and remembers the last one, which the sender quotes.

    Records with a traceback pass, unless the exception is a network error (OSError).
    Nothing is held back while the `kafka` logger is set below WARNING (debugging)."""

    _PREFIX = re.compile(r"^<[^>]*>:\s*")

    def __init__(self) -> None:
        super().__init__()
        self._last_error: str | None = None
        self._last_warning: str | None = None

    @property
    def last(self) -> str | None:
        """The last error kafka-python logged (else its last warning) since `forget()`."""
        return self._last_error or self._last_warning

    def forget(self) -> None:
        self._last_error = self._last_warning = None

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("kafka").getEffectiveLevel() < logging.WARNING:
            return True
        if record.levelno >= logging.CRITICAL:
            return True
        if record.exc_info and record.exc_info[1] is not None and not isinstance(record.exc_info[1], OSError):
            return True
        if record.levelno >= logging.WARNING:
            text = self._PREFIX.sub("", record.getMessage())[:200]
            if record.levelno >= logging.ERROR:
                self._last_error = text
            else:
                self._last_warning = text
        return False


QUIETER = KafkaLogQuieter()


def quiet_kafka_logs() -> KafkaLogQuieter:
    """Put the quieter on every `kafka.*` logger that exists now (a logger's filters see
    only its own records, so each needs it); call it after importing kafka-python."""
    names = [n for n in list(logging.root.manager.loggerDict) if n == "kafka" or n.startswith("kafka.")]
    for name in names:
        logger = logging.getLogger(name)
        if QUIETER not in logger.filters:
            logger.addFilter(QUIETER)
    return QUIETER


def _acknowledged_prefix(futures: list[Any]) -> int:
    """How many of `futures`, from the first, succeeded: the rows the spool may forget."""
    acked = 0
    for future in futures:
        if not future.is_done or future.failed():
            break
        acked += 1
    return acked


def _abandon_unanswered(producer: Any) -> None:
    """Fail a kafka-python producer's unanswered sends, so that its close() completes.

    kafka-python 3.0 (checked against 3.0.12): close() cannot drop unanswered sends itself; its
    I/O thread (the private ``KafkaProducer._sender``) can: force_close fails them, after which
    close() completes and the producer is not closed again at exit. No public call does this."""
    io_thread = getattr(producer, "_sender", None)
    if io_thread is not None:
        io_thread.force_close()
        io_thread.join(5)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


@dataclass
class _Outage:
    since: float  # monotonic: when the first unanswered send was made
    reported: float  # monotonic: when the last line about it was logged


@dataclass
class _Recovery:
    outage_s: float
    drained: int = 0


class SpoolSender:
    def __init__(
        self,
        spool: Spool,
        producer_config: dict[str, Any],
        metrics: AgentMetrics,
        topic: str = GPU_SAMPLES,
        batch_rows: int = 5000,
        lost_after_s: float = LOST_AFTER_S,
        report_every_s: float = REPORT_EVERY_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.spool = spool
        self.config = producer_config
        self.metrics = metrics
        self.topic = topic
        self.batch_rows = batch_rows
        self.lost_after_s = lost_after_s
        self.report_every_s = report_every_s
        self.poll_s = poll_s
        self._producer: Any = None
        self._failed_batches = 0
        self._outage: _Outage | None = None
        self._recovery: _Recovery | None = None
        self._drain_deadline: float | None = None
        self._stop: threading.Event | None = None
        self._drain_timeout_s = 20.0

    @property
    def bootstrap(self) -> str:
        servers = self.config.get("bootstrap_servers", "")
        return ",".join(servers) if isinstance(servers, (list, tuple)) else str(servers)

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            quiet_kafka_logs()
            try:
                self._producer = KafkaProducer(**self.config)
            finally:
                quiet_kafka_logs()  # loggers of modules kafka-python imported on the way
        return self._producer

    def _deadline(self) -> float | None:
        """None while running; once stop is set, the end of the shutdown drain."""
        if self._drain_deadline is None and self._stop is not None and self._stop.is_set():
            self._drain_deadline = time.monotonic() + self._drain_timeout_s
        return self._drain_deadline

    # ------------------------------------------------------------------ sending

    def send_batch(self) -> int:
        """Send the oldest rows and wait for Kafka's answer to every one of them (during an
        outage, until it is back; while stopping, until the drain deadline); delete the
        acknowledged prefix from the spool. Returns how many were acknowledged."""
        rows = self.spool.peek(self.batch_rows)
        if not rows:
            self._caught_up()
            return 0
        began = time.monotonic()
        try:
            producer = self._ensure_producer()
        except Exception as exc:  # noqa: BLE001 - cannot bootstrap (unreachable, refused, TLS): try again later
            self._unreachable(began, _describe(exc))
            return 0
        futures = self._send_rows(producer, rows, began)
        self._await(producer, futures, began)
        acked = _acknowledged_prefix(futures)
        failed = [i for i, f in enumerate(futures) if f.is_done and f.failed()]
        if failed:
            self._refused(futures, failed[0], acked)
        if acked:
            self._delivered(rows, acked, began, clean=not failed)
        if self._failed_batches >= MAX_FAILED_BATCHES and all(f.is_done for f in futures):
            self._close_producer()  # nothing of ours is in flight: closing loses nothing
            self._failed_batches = 0
        self.metrics.spool_rows.set(self.spool.pending_rows)
        self.metrics.spool_bytes.set(self.spool.pending_bytes)
        return acked

    def _send_rows(self, producer: Any, rows: list[SpoolRow], began: float) -> list[Any]:
        """Hand `rows` to the producer, in order, until one is refused; their futures."""
        from kafka.errors import KafkaTimeoutError

        futures: list[Any] = []
        for row in rows:
            try:
                futures.append(producer.send(self.topic, key=row.key, value=row.value))
            except KafkaTimeoutError as exc:  # no metadata within max_block_ms: the broker is away
                self._unreachable(began, _describe(exc))
                break
            except Exception as exc:  # noqa: BLE001 - e.g. the producer was closed: replace it once idle
                log.warning("kafka producer refused a send (%s); a new producer takes over", _describe(exc))
                self._failed_batches = MAX_FAILED_BATCHES
                break
        return futures

    def _refused(self, futures: list[Any], first_failed: int, acked: int) -> None:
        """Kafka refused the send at `first_failed`: say so (and what will arrive twice)."""
        self.metrics.send_errors.inc()
        later_ok = sum(1 for f in futures[first_failed + 1 :] if f.is_done and f.succeeded())
        log.warning(
            "kafka did not acknowledge a sample (%s); resending from there%s",
            _describe(futures[first_failed].exception),
            f" ({later_ok} later samples of that batch were acknowledged and will arrive twice)" if later_ok else "",
        )
        self._failed_batches = self._failed_batches + 1 if not acked else 0

    def _delivered(self, rows: list[SpoolRow], acked: int, began: float, clean: bool) -> None:
        """The first `acked` rows are in Kafka: off the spool. `clean`: no send of the batch failed."""
        self.spool.ack(rows[acked - 1].row_id)
        self.metrics.samples_sent.inc(acked)
        self.metrics.send_latency.observe(time.monotonic() - began)
        if clean:
            self._failed_batches = 0
        self._reachable(acked, caught_up=acked == len(rows) and len(rows) < self.batch_rows)

    def _await(self, producer: Any, futures: list[Any], began: float) -> None:
        """Wait until every future is done; only a shutdown drain's deadline cuts it short."""
        from kafka.errors import KafkaTimeoutError

        while not all(f.is_done for f in futures):
            deadline = self._deadline()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = self.poll_s if deadline is None else max(0.0, min(self.poll_s, deadline - now))
            try:
                producer.flush(timeout=wait)
            except KafkaTimeoutError:
                pass  # not an error: Kafka has not answered yet, the producer keeps retrying in order
            if not all(f.is_done for f in futures) and time.monotonic() - began >= self.lost_after_s:
                self._unreachable(began, QUIETER.last or "no acknowledgement")

    # ------------------------------------------------------------------ outage lines

    def _unreachable(self, since: float, reason: str) -> None:
        now = time.monotonic()
        if self._outage is None:
            if self._recovery is not None:  # back, but away again before the backlog was sent
                self._log_back()
            self._outage = _Outage(since, now)
            self.metrics.kafka_up.set(0)
            self.metrics.kafka_outages.inc()
            log.warning(
                "kafka unreachable at %s (%s); spooling (%d samples pending)",
                self.bootstrap,
                reason,
                self.spool.pending_rows,
            )
        elif now - self._outage.reported >= self.report_every_s:
            self._outage.reported = now
            log.warning(
                "kafka still unreachable at %s after %.0f s (%s); %d samples pending",
                self.bootstrap,
                now - self._outage.since,
                reason,
                self.spool.pending_rows,
            )

    def _reachable(self, acked: int, caught_up: bool) -> None:
        """`caught_up`: this batch held every row the spool had when it was read."""
        self.metrics.kafka_up.set(1)
        if self._outage is not None:  # this batch was sent before or during the outage: the backlog is still to come
            self._recovery = _Recovery(time.monotonic() - self._outage.since, acked)
            self._outage = None
            QUIETER.forget()
        elif self._recovery is not None:
            self._recovery.drained += acked
            if caught_up:
                self._log_back()

    def _caught_up(self) -> None:
        if self._recovery is not None and self._outage is None:
            self._log_back()

    def _log_back(self) -> None:
        if self._recovery is not None:
            log.info(
                "kafka reachable again after %.0f s; %d samples drained",
                self._recovery.outage_s,
                self._recovery.drained,
            )
            self._recovery = None

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event, drain_timeout_s: float = 20) -> None:
        """Send until `stop`; then keep draining for up to `drain_timeout_s` (clean shutdown)."""
        self._stop, self._drain_timeout_s = stop, drain_timeout_s
        backoff = 0.2
        while True:
            deadline = self._deadline()
            if deadline is not None and (not self.spool.pending_rows or time.monotonic() >= deadline):
                break
            try:
                sent = self.send_batch()
            except Exception:  # a bug, not an outage (those are handled above): say where, keep the rows
                log.exception("sending spooled samples failed; they stay spooled")
                sent = 0
            if sent:
                backoff = 0.2
                continue
            if self._deadline() is not None:
                time.sleep(0.2)
            elif self.spool.pending_rows:
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                self.spool.has_rows.wait(0.5)
        self._log_back()
        if self.spool.pending_rows:
            log.warning(
                "stopping with %d samples still spooled; they are sent at the next start", self.spool.pending_rows
            )
        self._close_producer()

    def _close_producer(self) -> None:
        """Close the producer: at once when nothing is in flight; with sends still unanswered
        (only at shutdown, or for a producer found unusable) they are abandoned: their rows
        are still in the spool."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        from kafka.errors import KafkaTimeoutError

        try:
            producer.close(timeout=1)
            return
        except KafkaTimeoutError:
            pass  # kafka-python's close flushes first and gives up on unanswered sends
        except Exception as exc:  # noqa: BLE001 - nothing more can be done with it
            log.warning("closing the kafka producer: %s", _describe(exc))
        _abandon_unanswered(producer)
        try:
            producer.close(timeout=0)
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the kafka producer: %s", _describe(exc))
