"""Wiring: the Faust app that turns gpu.samples into usage.records.

validate -> DLQ | dedupe + per-GPU deltas + lease split + windows (streams.rollup)
-> closed windows to `usage.records`. The rollup state of each node lives in the
Faust table `node-rollup`, keyed like `gpu.samples` (by node), so each worker owns
the state of the partitions it consumes and the changelog restores it on rebalance.

A broker outage is waited out: deliveries that fail (a produce batch expires after
Faust's producer_request_timeout) are sent again in order, and silent nodes are not
closed while the broker is away or for `idle_close_ms` after it is back (their silence
was the outage's). aiokafka's metadata retries are paced (streams/aiokafka_pacing.py), so
that a producer with a batch in hand does not spin through the outage. The BrokerWatch
logs the outage.

The parts, each with one job: `new_faust_app` (the app's settings), `Outputs` (the
hand-off to usage.records, the DLQ and the table's changelog), `SeekBacks` (offsets the
consumer skipped), `BatchRollup` (a batch of samples through the rollup), `SilentNodes`
(closing the windows of hosts that went quiet); `create_app` wires them to Faust.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust

from schemas.topics import GPU_SAMPLES, GPU_SAMPLES_DLQ, TOPIC_SPECS, USAGE_RECORDS
from schemas.units import NS_PER_MS
from schemas.usage import UsageRecord
from schemas.validate import InvalidMessage, parse_sample
from streams.aiokafka_pacing import pace_failed_metadata_updates
from streams.broker_watch import BrokerWatch
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, Outcome, new_state
from streams.settings import StreamsSettings

log = logging.getLogger(__name__)

IDLE_SWEEP_S = 1.0  # how often silent nodes are looked for (wall clock)
MAX_RESEND_BACKOFF_S = 10.0
SEEK_AGAIN_S = 2.0  # a seek back not answered this long is asked again
SAMPLE_PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}[GPU_SAMPLES]

State = dict[str, Any]  # a node's rollup state (streams.rollup), as the table holds it
Touched = dict[str, tuple[int, State]]  # node -> (partition, state) changed by a batch or a sweep
Send = Callable[[], Awaitable[Any]]  # sends one message, returns its delivery to await
Sending = tuple[Send, Any]  # (send, its delivery, or None: to send now)


def wall_ms() -> int:
    return time.time_ns() // NS_PER_MS


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


# --------------------------------------------------------------------------- delivering


async def deliver_all(
    sends: list[Sending], watch: BrokerWatch | None = None, max_backoff_s: float = MAX_RESEND_BACKOFF_S
) -> None:
    """Await every delivery of `sends` ((send, delivery or None to send now) pairs); send
    the ones that failed again, in their order, until all are delivered, however long the
    broker is away. A message sent twice is harmless here: records carry their record_id
    (the sink drops copies), changelog values are whole states. (A produce batch fails only
    once it expires, after Faust's producer_request_timeout, 20 min; the batches of one
    partition expire in order, so a resume point is not delivered before its states.)"""
    backoff = 0.5
    while sends:
        failed = await _failed_deliveries(await _started(sends))
        if failed:
            if watch is not None:
                watch.nudge()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
        sends = failed


async def _started(sends: list[Sending]) -> list[Sending]:
    """`sends` with each one not yet sent sent now (its delivery None where the send failed)."""
    from aiokafka.errors import KafkaError

    started = []
    for send, delivery in sends:
        if delivery is None:
            try:
                delivery = await send()
            except KafkaError as exc:  # the producer's buffer timed out: try again later
                log.debug("send failed: %r", exc)
        started.append((send, delivery))
    return started


async def _failed_deliveries(started: list[Sending]) -> list[Sending]:
    """Await each delivery, in order; the sends that did not arrive, to send again."""
    from aiokafka.errors import KafkaError

    failed: list[Sending] = []
    for send, delivery in started:
        if delivery is None:
            failed.append((send, None))
            continue
        try:
            await delivery
        except KafkaError as exc:  # expired in the producer during an outage
            log.debug("delivery failed, sending again: %r", exc)
            failed.append((send, None))
    return failed


def changelog_writes(touched: Touched, markers: dict[int, int | None]) -> list[tuple[str, Any, int]]:
    """(key, value, partition) for the table: the node states, then the resume points, in the
    same changelog partitions as the states."""
    writes: list[tuple[str, Any, int]] = [(node, state, partition) for node, (partition, state) in touched.items()]
    writes += [
        (applied_key(partition), {"next_offset": next_offset}, partition)
        for partition, next_offset in markers.items()
        if next_offset is not None
    ]
    return writes


class Outputs:
    """The hand-off downstream: closed windows to usage.records (the Parquet sink reads them),
    rejected samples to the DLQ, node states and resume points to the table's changelog."""

    def __init__(self, usage: Any, dlq: Any, table: Any, watch: BrokerWatch | None) -> None:
        self.usage = usage
        self.dlq = dlq
        self.table = table
        self.watch = watch

    async def to_dlq(self, event: Any, reason: str) -> Sending:
        """Send a rejected message to the DLQ untouched; returns (send again, delivery)."""
        message = event.message
        headers = dlq_headers(reason, message.partition, message.offset)

        def send() -> Awaitable[Any]:
            return self.dlq.send(key=event.key, value=event.value, headers=headers)  # type: ignore[no-any-return]

        from aiokafka.errors import KafkaError

        try:
            return send, await send()
        except KafkaError as exc:  # the producer's buffer timed out: deliver_all sends it again
            log.debug("DLQ send failed: %r", exc)
            return send, None

    def record_send(self, record: UsageRecord) -> Send:
        return lambda: self.usage.send(key=record.tenant_id.encode(), value=record.to_json_bytes())

    def changelog_send(self, key: str, value: Any, partition: int) -> Send:
        # the events' own partition, as the table's changelog needs
        table = self.table
        return lambda: table.changelog_topic.send(
            key=key,
            value=value,
            partition=partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
        )

    async def persist(
        self, records: list[UsageRecord], touched: Touched, pending: list[Sending], markers: dict[int, int | None]
    ) -> None:
        """Deliver DLQ entries and closed windows, then the node states, then the resume
        points, awaiting each: a crash in between re-emits identical records (same
        record_id, deduplicated by the sink) instead of losing them. Faust's own flush before
        a commit gives up after 0.1 s, so nothing here is left to `send_soon`."""
        await deliver_all(pending + [(self.record_send(record), None) for record in records], self.watch)
        writes = changelog_writes(touched, markers)
        await deliver_all([(self.changelog_send(k, v, p), None) for k, v, p in writes], self.watch)
        for key, value, _ in writes:
            self.table.data[key] = value


# --------------------------------------------------------------------------- consuming


class SeekBacks:
    """Seeks back not yet answered, per partition (tp, offset, when asked): messages already in
    flight can overtake a seek in Faust's consumer, so it is asked again until it works."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.asked: dict[int, tuple[Any, int, float]] = {}

    async def seek_back(self, tp: Any, offset: int) -> None:
        asked = self.asked.get(tp.partition)
        if asked is None or asked[1] != offset or time.monotonic() - asked[2] > SEEK_AGAIN_S:
            log.warning("%s: offsets from %d were skipped by the consumer; reading again from there", tp, offset)
            self.asked[tp.partition] = (tp, offset, time.monotonic())
            await self.app.consumer.seek(tp, offset)

    def on_track(self, partition: int) -> None:
        self.asked.pop(partition, None)

    async def ask_again(self) -> None:
        for tp, offset, _ in list(self.asked.values()):
            await self.seek_back(tp, offset)


def rejections(outcome: Outcome, ts_ms: int) -> list[str]:
    """Why (part of) a sample goes to the DLQ: refused whole, or too late for some GPUs."""
    reasons = [outcome.rejected] if outcome.rejected else []
    if outcome.late_gpus:
        reasons.append(f"late: GPUs {', '.join(outcome.late_gpus)} already processed past ts {ts_ms}")
    return reasons


@dataclass
class Batch:
    """What one batch of events changed, persisted together at its end."""

    now_ms: int | None  # the far-future check's wall clock, or None: no check
    touched: Touched = field(default_factory=dict)
    records: list[UsageRecord] = field(default_factory=list)
    pending: list[Sending] = field(default_factory=list)  # DLQ deliveries
    expected: dict[int, int | None] = field(default_factory=dict)  # per partition: the next offset to apply


class BatchRollup:
    """A batch of gpu.samples events through the nodes' rollups, exactly once per offset: each
    partition's resume point (in the table) says which offset comes next."""

    def __init__(
        self,
        table: Any,
        rollups: dict[int, NodeRollup],
        outputs: Outputs,
        seeks: SeekBacks,
        check_future: bool,
    ) -> None:
        self.table = table
        self.rollups = rollups
        self.outputs = outputs
        self.seeks = seeks
        self.check_future = check_future

    async def process(self, events: Sequence[Any]) -> None:
        batch = Batch(wall_ms() if self.check_future else None)
        for event in events:
            if await self._in_order(event, batch.expected):
                await self._apply(event, batch)
        await self.outputs.persist(batch.records, batch.touched, batch.pending, batch.expected)

    async def _in_order(self, event: Any, expected: dict[int, int | None]) -> bool:
        """True for the next offset to apply (which it then advances); an offset below it was
        applied already (a replay after a restart), one above it means skipped messages."""
        message = event.message
        partition = message.partition
        if partition not in expected:
            marker = self.table.get(applied_key(partition))
            expected[partition] = marker["next_offset"] if marker else None
        want = expected[partition]
        if want is not None and message.offset != want:
            if message.offset > want:
                # Faust skipped (and acked) messages, e.g. fetched before a rebalance:
                # read them again from the first one not applied
                await self.seeks.seek_back(message.tp, want)
            return False
        expected[partition] = message.offset + 1
        self.seeks.on_track(partition)
        return True

    async def _apply(self, event: Any, batch: Batch) -> None:
        try:
            sample = parse_sample(event.value, batch.now_ms)
        except InvalidMessage as exc:
            batch.pending.append(await self.outputs.to_dlq(event, exc.reason))
            return
        message = event.message
        node = sample.node_id
        state = batch.touched[node][1] if node in batch.touched else (self.table.get(node) or new_state(node))
        state["partition"] = message.partition
        state["seen_wall_ms"] = wall_ms()
        outcome = self.rollups[message.partition].apply(state, sample, message.offset)
        batch.touched[node] = (message.partition, state)
        batch.pending += [await self.outputs.to_dlq(event, reason) for reason in rejections(outcome, sample.ts_ms)]
        batch.records.extend(outcome.records)


class SilentNodes:
    """Closes the open windows of nodes silent for `idle_close_ms` (a host that died), never for
    an outage's silence: not while the broker is away, nor for `idle_close_ms` after it is back."""

    def __init__(
        self,
        app: faust.App,
        table: Any,
        rollups: dict[int, NodeRollup],
        outputs: Outputs,
        idle_close_ms: int,
        watch: BrokerWatch | None,
    ) -> None:
        self.app = app
        self.table = table
        self.rollups = rollups
        self.outputs = outputs
        self.idle_close_ms = idle_close_ms
        self.watch = watch

    def outage_silence(self, now_ms: int) -> bool:
        """True while the broker is away and for `idle_close_ms` after it is back: every node
        was silent then, because of the outage, not because its host died."""
        watch = self.watch
        if watch is None:
            return False
        return watch.away or (watch.back_wall_ms is not None and now_ms < watch.back_wall_ms + self.idle_close_ms)

    async def close(self) -> None:
        """Close the windows of the silent nodes of the partitions this worker owns. To be
        called under the state lock: the batch agent may have held it through a whole outage
        (awaiting deliveries), and the partitions may have moved meanwhile."""
        now_ms = wall_ms()
        if self.outage_silence(now_ms):
            return
        owned = self._owned_partitions()
        if owned is None:
            return
        touched: Touched = {}
        records: list[UsageRecord] = []
        for node, state in list(self.table.data.items()):
            if isinstance(state, dict) and state.get("partition") in owned and "gpus" in state:
                closed = self.rollups[state["partition"]].close_idle(state, now_ms)
                if closed:
                    records.extend(closed)
                    touched[node] = (state["partition"], state)
        if records:
            await self.outputs.persist(records, touched, [], {})

    def _owned_partitions(self) -> set[int] | None:
        """The gpu.samples partitions assigned to this worker; None while the consumer is not
        started yet, or is rebalancing (the next sweep tries again)."""
        try:
            return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == GPU_SAMPLES}
        except Exception:  # the consumer is not started yet, or is rebalancing: next tick
            return None


# --------------------------------------------------------------------------- the app


def new_faust_app(settings: StreamsSettings) -> faust.App:
    """The Faust app with the worker's settings (at-least-once with idempotent outputs, no web
    server, acks from every replica)."""
    return faust.App(
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


def create_app(settings: StreamsSettings, leases: LeaseIndex, watch: BrokerWatch | None = None) -> faust.App:
    """Build the Faust app; `leases` is kept current by a LeaseView; `watch` (optional)
    tells it when the broker is away."""
    pace_failed_metadata_updates()
    config = settings.rollup_config()
    app = new_faust_app(settings)
    samples = app.topic(GPU_SAMPLES, key_serializer="raw", value_serializer="raw", partitions=SAMPLE_PARTITIONS)
    usage = app.topic(USAGE_RECORDS, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(GPU_SAMPLES_DLQ, key_serializer="raw", value_serializer="raw")
    # keys: node id as str (tables serialize keys as JSON: bytes keys would not read back
    # in changelog recovery); values: the JSON state dict
    table = app.Table("node-rollup", default=None, partitions=SAMPLE_PARTITIONS, key_type=str)
    rollups = {p: NodeRollup(config, leases, partition=p) for p in range(SAMPLE_PARTITIONS)}
    outputs = Outputs(usage, dlq, table, watch)
    seeks = SeekBacks(app)
    batches = BatchRollup(table, rollups, outputs, seeks, settings.check_future)
    silent = SilentNodes(app, table, rollups, outputs, config.idle_close_ms, watch)
    # The batch agent and the silent-node sweep both change node states and emit records;
    # one at a time, so that "records delivered before the state that forgets them" holds.
    state_lock = asyncio.Lock()

    @app.agent(samples)
    async def roll_up(stream: Any) -> None:
        # Events come in batches so that each node's state is written to the changelog once
        # per batch, not once per sample; Faust acks a batch's offsets after this body.
        async for events in stream.take_events(settings.batch_events, within=settings.batch_seconds):
            async with state_lock:
                await batches.process(events)

    async def close_silent_nodes() -> None:
        """Close the open windows of nodes silent for `idle_close_ms` (a host that died);
        repeat any seek back that has not been answered yet. Not for an outage's silence."""
        if silent.outage_silence(wall_ms()):
            return
        await seeks.ask_again()
        async with state_lock:
            await silent.close()

    app.timer(interval=IDLE_SWEEP_S)(close_silent_nodes)
    app.roll_up = roll_up  # type: ignore[attr-defined]
    return app
