"""Wiring: the Faust app that turns gpu.samples into usage.records.

validate -> DLQ | dedupe + per-GPU deltas + lease split + windows (streams.rollup)
-> closed windows to `usage.records`. The rollup state of each node lives in the
Faust table `node-rollup`, keyed like `gpu.samples` (by node), so each worker owns
the state of the partitions it consumes and the changelog restores it on rebalance.

A broker outage is waited out: deliveries that fail (a produce batch expires after
Faust's producer_request_timeout) are sent again in order, and silent nodes are not
closed while the broker is away or for `idle_close_ms` after it is back (their silence
was the outage's). aiokafka's metadata retries are paced, so that a producer with a
batch in hand does not spin through the outage. The BrokerWatch logs the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from schemas.topics import GPU_SAMPLES, GPU_SAMPLES_DLQ, TOPIC_SPECS, USAGE_RECORDS
from schemas.validate import InvalidMessage, parse_sample
from streams.broker_watch import BrokerWatch
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, new_state
from streams.settings import StreamsSettings

log = logging.getLogger(__name__)

IDLE_SWEEP_S = 1.0  # how often silent nodes are looked for (wall clock)
MAX_RESEND_BACKOFF_S = 10.0
SAMPLE_PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}[GPU_SAMPLES]


def dlq_headers(reason: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        ("wattmeter-reason", reason.encode()[:4000]),
        ("wattmeter-source-topic", GPU_SAMPLES.encode()),
        ("wattmeter-source-partition", str(partition).encode()),
        ("wattmeter-source-offset", str(offset).encode()),
    ]


def applied_key(partition: int) -> str:
    """Table key of a partition's resume point (the next offset not yet applied)."""
    return f"__applied__/{partition}"


Send = Callable[[], Awaitable[Any]]  # sends one message, returns its delivery to await


async def deliver_all(
    sends: list[tuple[Send, Any]], watch: BrokerWatch | None = None, max_backoff_s: float = MAX_RESEND_BACKOFF_S
) -> None:
    """Await every delivery of `sends` ((send, delivery or None to send now) pairs); send
    the ones that failed again, in their order, until all are delivered, however long the
    broker is away. A message sent twice is harmless here: records carry their record_id
    (the sink drops copies), changelog values are whole states. (A produce batch fails only
    once it expires, after Faust's producer_request_timeout, 20 min; the batches of one
    partition expire in order, so a resume point is not delivered before its states.)"""
    from aiokafka.errors import KafkaError

    backoff = 0.5
    while sends:
        failed: list[tuple[Send, Any]] = []
        started = []
        for send, delivery in sends:
            if delivery is None:
                try:
                    delivery = await send()
                except KafkaError as exc:  # the producer's buffer timed out: try again later
                    log.debug("send failed: %r", exc)
            started.append((send, delivery))
        for send, delivery in started:
            if delivery is None:
                failed.append((send, None))
                continue
            try:
                await delivery
            except KafkaError as exc:  # expired in the producer during an outage
                log.debug("delivery failed, sending again: %r", exc)
                failed.append((send, None))
        if failed:
            if watch is not None:
                watch.nudge()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
        sends = failed


def pace_failed_metadata_updates() -> None:
    """Wait aiokafka's retry_backoff_ms after a failed metadata update.

    While a produce batch waits for a partition leader, aiokafka's sender asks for metadata
    again as soon as an update fails; with the broker down every attempt fails at once, so
    the worker spun through thousands of connection attempts (and log records) a second for
    the whole outage. Its other retry paths already wait retry_backoff_ms; this one then
    does too. A no-op where aiokafka's client has no such method."""
    from aiokafka.client import AIOKafkaClient

    update = getattr(AIOKafkaClient, "_metadata_update", None)
    if update is None or getattr(update, "wattmeter_paced", False):
        return

    async def paced(self: Any, cluster_metadata: Any, topics: Any) -> Any:
        updated = await update(self, cluster_metadata, topics)
        if updated is False:
            await asyncio.sleep(getattr(self, "_retry_backoff", 0.1))
        return updated

    paced.wattmeter_paced = True  # type: ignore[attr-defined]
    AIOKafkaClient._metadata_update = paced  # type: ignore[method-assign]


def create_app(settings: StreamsSettings, leases: LeaseIndex, watch: BrokerWatch | None = None) -> faust.App:
    """Build the Faust app; `leases` is kept current by a LeaseView; `watch` (optional)
    tells it when the broker is away."""
    pace_failed_metadata_updates()
    config = settings.rollup_config()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=SAMPLE_PARTITIONS,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        processing_guarantee=settings.processing_guarantee,
        web_enabled=False,
        stream_wait_empty=True,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 10, 0.5),
    )
    samples = app.topic(GPU_SAMPLES, key_serializer="raw", value_serializer="raw", partitions=SAMPLE_PARTITIONS)
    usage = app.topic(USAGE_RECORDS, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(GPU_SAMPLES_DLQ, key_serializer="raw", value_serializer="raw")
    # keys: node id as str (tables serialize keys as JSON: bytes keys would not read back
    # in changelog recovery); values: the JSON state dict
    table = app.Table("node-rollup", default=None, partitions=SAMPLE_PARTITIONS, key_type=str)
    rollups = {p: NodeRollup(config, leases, partition=p) for p in range(SAMPLE_PARTITIONS)}
    # partition -> (tp, offset, when) of a seek back not yet answered: messages already in
    # flight can overtake a seek in Faust's consumer, so it is asked again until it works
    seeks_asked: dict[int, tuple[Any, int, float]] = {}
    # The batch agent and the silent-node sweep both change node states and emit records;
    # one at a time, so that "records delivered before the state that forgets them" holds.
    state_lock = asyncio.Lock()

    async def seek_back(tp, offset: int) -> None:
        asked = seeks_asked.get(tp.partition)
        if asked is None or asked[1] != offset or time.monotonic() - asked[2] > 2.0:
            log.warning("%s: offsets from %d were skipped by the consumer; reading again from there", tp, offset)
            seeks_asked[tp.partition] = (tp, offset, time.monotonic())
            await app.consumer.seek(tp, offset)

    async def to_dlq(event: Any, reason: str) -> tuple[Send, Any]:
        """Send a rejected message to the DLQ untouched; returns (send again, delivery)."""
        message = event.message
        headers = dlq_headers(reason, message.partition, message.offset)

        def send() -> Awaitable[Any]:
            return dlq.send(key=event.key, value=event.value, headers=headers)

        from aiokafka.errors import KafkaError

        try:
            return send, await send()
        except KafkaError as exc:  # the producer's buffer timed out: deliver_all sends it again
            log.debug("DLQ send failed: %r", exc)
            return send, None

    def record_send(record: Any) -> Send:
        return lambda: usage.send(key=record.tenant_id.encode(), value=record.to_json_bytes())

    def changelog_send(key: str, value: Any, partition: int) -> Send:
        # the events' own partition, as the table's changelog needs
        return lambda: table.changelog_topic.send(
            key=key,
            value=value,
            partition=partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
        )

    async def persist(
        records: list, touched: dict[str, tuple[int, dict]], pending: list, markers: dict[int, int | None]
    ) -> None:
        """Deliver DLQ entries and closed windows, then the node states, then the resume
        points, awaiting each: a crash in between re-emits identical records (same
        record_id, deduplicated by the sink) instead of losing them. Faust's own flush before
        a commit gives up after 0.1 s, so nothing here is left to `send_soon`."""
        await deliver_all(pending + [(record_send(record), None) for record in records], watch)
        writes = [(node, state, partition) for node, (partition, state) in touched.items()]
        # the resume points go last, in the same changelog partitions as the states
        writes += [
            (applied_key(partition), {"next_offset": next_offset}, partition)
            for partition, next_offset in markers.items()
            if next_offset is not None
        ]
        await deliver_all([(changelog_send(key, value, partition), None) for key, value, partition in writes], watch)
        for key, value, _ in writes:
            table.data[key] = value

    @app.agent(samples)
    async def roll_up(stream: faust.Stream) -> None:
        # Events come in batches so that each node's state is written to the changelog once
        # per batch, not once per sample; Faust acks a batch's offsets after this body.
        async for events in stream.take_events(settings.batch_events, within=settings.batch_seconds):
            async with state_lock:
                await process_batch(events)

    async def process_batch(events: list) -> None:
        now_ms = time.time_ns() // 1_000_000 if settings.check_future else None
        touched: dict[str, tuple[int, dict]] = {}
        records = []
        pending = []  # DLQ deliveries
        expected: dict[int, int | None] = {}  # per partition: the next offset to apply
        for event in events:
            message = event.message
            partition = message.partition
            if partition not in expected:
                marker = table.get(applied_key(partition))
                expected[partition] = marker["next_offset"] if marker else None
            want = expected[partition]
            if want is not None and message.offset != want:
                if message.offset > want:
                    # Faust skipped (and acked) messages, e.g. fetched before a rebalance:
                    # read them again from the first one not applied
                    await seek_back(message.tp, want)
                continue  # below `want`: already applied (a replay after a restart)
            expected[partition] = message.offset + 1
            seeks_asked.pop(partition, None)  # on track again
            try:
                sample = parse_sample(event.value, now_ms)
            except InvalidMessage as exc:
                pending.append(await to_dlq(event, exc.reason))
                continue
            node = sample.node_id
            state = touched[node][1] if node in touched else (table.get(node) or new_state(node))
            state["partition"] = partition
            state["seen_wall_ms"] = time.time_ns() // 1_000_000
            outcome = rollups[partition].apply(state, sample, message.offset)
            touched[node] = (partition, state)
            reasons = [outcome.rejected] if outcome.rejected else []
            if outcome.late_gpus:
                reasons.append(f"late: GPUs {', '.join(outcome.late_gpus)} already processed past ts {sample.ts_ms}")
            pending += [await to_dlq(event, reason) for reason in reasons]
            records.extend(outcome.records)
        await persist(records, touched, pending, expected)

    def outage_silence(now_ms: int) -> bool:
        """True while the broker is away and for `idle_close_ms` after it is back: every node
        was silent then, because of the outage, not because its host died."""
        if watch is None:
            return False
        return watch.away or (watch.back_wall_ms is not None and now_ms < watch.back_wall_ms + config.idle_close_ms)

    @app.timer(interval=IDLE_SWEEP_S)
    async def close_silent_nodes() -> None:
        """Close the open windows of nodes silent for `idle_close_ms` (a host that died);
        repeat any seek back that has not been answered yet. Not for an outage's silence."""
        if outage_silence(time.time_ns() // 1_000_000):
            return
        for tp, offset, _ in list(seeks_asked.values()):
            await seek_back(tp, offset)
        async with state_lock:
            # Decided under the lock: the batch agent may have held it through a whole outage
            # (awaiting deliveries), and the partitions may have moved meanwhile.
            now_ms = time.time_ns() // 1_000_000
            if outage_silence(now_ms):
                return
            try:
                owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == GPU_SAMPLES}
            except Exception:  # the consumer is not started yet, or is rebalancing: next tick
                return
            touched: dict[str, tuple[int, dict]] = {}
            records = []
            for node, state in list(table.data.items()):
                if isinstance(state, dict) and state.get("partition") in owned and "gpus" in state:
                    closed = rollups[state["partition"]].close_idle(state, now_ms)
                    if closed:
                        records.extend(closed)
                        touched[node] = (state["partition"], state)
            if records:
                await persist(records, touched, [], {})

    app.roll_up = roll_up  # type: ignore[attr-defined]
    return app
