"""Wiring: the Faust app that turns gpu.samples into usage.records.

validate -> DLQ | dedupe + per-GPU deltas + lease split + windows (streams.rollup)
-> closed windows to `usage.records`. The rollup state of each node lives in the
Faust table `node-rollup`, keyed like `gpu.samples` (by node), so each worker owns
the state of the partitions it consumes and the changelog restores it on rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from schemas.topics import GPU_SAMPLES, GPU_SAMPLES_DLQ, TOPIC_SPECS, USAGE_RECORDS
from schemas.validate import InvalidMessage, parse_sample
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, new_state
from streams.settings import StreamsSettings

log = logging.getLogger(__name__)

IDLE_SWEEP_S = 1.0  # how often silent nodes are looked for (wall clock)
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


def create_app(settings: StreamsSettings, leases: LeaseIndex) -> faust.App:
    """Build the Faust app; `leases` is kept current by a LeaseView."""
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

    async def to_dlq(event: Any, reason: str) -> Any:
        """Send a rejected message to the DLQ untouched; returns the delivery to await."""
        message = event.message
        return await dlq.send(
            key=event.key, value=event.value, headers=dlq_headers(reason, message.partition, message.offset)
        )

    async def persist(
        records: list, touched: dict[str, tuple[int, dict]], pending: list, markers: dict[int, int | None]
    ) -> None:
        """Deliver DLQ entries and closed windows, then the node states, then the resume
        points, awaiting each: a crash in between re-emits identical records (same
        record_id, deduplicated by the sink) instead of losing them. Faust's own flush before
        a commit gives up after 0.1 s, so nothing here is left to `send_soon`."""
        pending = pending + [
            await usage.send(key=record.tenant_id.encode(), value=record.to_json_bytes()) for record in records
        ]
        for delivery in pending:
            await delivery
        writes = [(node, state, partition) for node, (partition, state) in touched.items()]
        # the resume points go last, in the same changelog partitions as the states
        writes += [
            (applied_key(partition), {"next_offset": next_offset}, partition)
            for partition, next_offset in markers.items()
            if next_offset is not None
        ]
        changelog = []
        for key, value, partition in writes:  # the events' own partition, as the table's changelog needs
            changelog.append(
                await table.changelog_topic.send(
                    key=key,
                    value=value,
                    partition=partition,
                    key_serializer=table.key_serializer,
                    value_serializer=table.value_serializer,
                )
            )
            table.data[key] = value
        for delivery in changelog:
            await delivery

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

    @app.timer(interval=IDLE_SWEEP_S)
    async def close_silent_nodes() -> None:
        """Close the open windows of nodes silent for `idle_close_ms` (a host that died);
        repeat any seek back that has not been answered yet."""
        for tp, offset, _ in list(seeks_asked.values()):
            await seek_back(tp, offset)
        try:
            owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == GPU_SAMPLES}
        except Exception:  # the consumer is not started yet, or is rebalancing: next tick
            return
        async with state_lock:
            now_ms = time.time_ns() // 1_000_000
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
