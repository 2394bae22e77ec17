"""Adapter: the transactional outbox from the billing database to the compacted `gpu.leases`.

Why the database and the topic never disagree
---------------------------------------------
1. Every change to a GPU's leases (`billing.leases.service`) adds a `LeaseOutbox` row for
   that GPU in the same transaction as the change: a committed change always has a pending
   row, and a change that rolled back has none.
2. `publish_pending` reads the pending rows, then each of their GPUs' *current* leases
   (not the change that queued the row), trims them (`schemas.leases.trim_timeline`) and
   sends one timeline per GPU, keyed by its uuid, with `acks=all` and idempotence; it
   flushes and checks every send's future, and only then, in the same transaction that read
   them, marks exactly the rows it read as published. Rows that a change added meanwhile
   are not among them and stay pending.
3. So if the process dies (or is killed) after a commit and before its publish, the row is
   still pending and the next publish (`wattmeter-billing leases publish`, or any command
   that changes a lease) sends the GPU's timeline. If it dies after sending and before
   marking, the rows stay pending and the same current state is sent again: compaction
   keeps the latest message per GPU, and a timeline that equals the last one changes
   nothing for a worker. No message is a delta, so no replay, duplicate or loss of a
   message can leave a worker with a state the database never had.
4. Publishers are serialized (PostgreSQL: an advisory lock held by the publishing
   transaction; SQLite: the write lock it takes at BEGIN), and each one's sends are
   acknowledged before it commits and releases the lock. A later publisher therefore
   reads a state at least as new and its messages land after the earlier ones on the
   GPU's partition: an older timeline is never written after a newer one.

Hence, once no outbox row is pending, the latest message per GPU on `gpu.leases` is the
database's timeline for that GPU, trimmed at the time it was published; until then the
pending rows name exactly the GPUs whose message lags.

The horizon
-----------
A timeline keeps the leases that are open or end after `now - horizon`
(`WATTMETER_LEASE_HORIZON_S`, default 8 days). Samples reach the worker at most the
agents' spool age limit late (`agents.config` `spool_max_age_s`, 7 days by default; state
the fleet's value in `WATTMETER_SPOOL_MAX_AGE_S`), so a shorter horizon is refused: it
could drop a lease a late sample still needs. Reprocessing `gpu.samples` from further back
than the horizon needs the full history from the database, not the topic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from billing.leases.errors import InvalidHorizon, PublishFailed
from billing.ledger import models
from billing.ledger.db import Ledger
from billing.ledger.db import now_ms as wall_ms
from schemas.leases import GpuLeaseTimeline, Lease, trim_timeline
from schemas.topics import GPU_LEASES

DEFAULT_HORIZON_S = 8 * 24 * 3600
# agents.config.AgentConfig.spool_max_age_s: billing does not import the agent (tests check they agree)
DEFAULT_SPOOL_MAX_AGE_S = 7 * 24 * 3600
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BATCH_ROWS = 5_000  # outbox rows per publishing transaction
SEND_TIMEOUT_S = 60
BOOTSTRAP_TIMEOUT_S = 30  # kafka-python's default: how long to wait for a first broker to answer
_PUBLISH_LOCK = 7_412_032  # pg_advisory_xact_lock key: one publisher at a time
_CHUNK = 500


def _env_seconds(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidHorizon(f"{name}={raw!r} is not a whole number of seconds") from None
    if value <= 0:
        raise InvalidHorizon(f"{name}={raw!r} must be positive")
    return value


def spool_max_age_ms(env: Mapping[str, str] | None = None) -> int:
    """The agents' spool age limit: `WATTMETER_SPOOL_MAX_AGE_S`, else the agent's default."""
    return _env_seconds(os.environ if env is None else env, "WATTMETER_SPOOL_MAX_AGE_S", DEFAULT_SPOOL_MAX_AGE_S) * 1000


def check_horizon(horizon_ms: int, spool_ms: int | None = None) -> None:
    """Refuse a horizon shorter than the spool age limit: a late sample could miss its lease."""
    spool_ms = spool_max_age_ms() if spool_ms is None else spool_ms
    if horizon_ms < spool_ms:
        raise InvalidHorizon(
            f"lease horizon {horizon_ms // 1000} s is shorter than the agents' spool age limit {spool_ms // 1000} s: "
            "a late sample could miss its lease (raise WATTMETER_LEASE_HORIZON_S)"
        )


def lease_horizon_ms(env: Mapping[str, str] | None = None) -> int:
    """`WATTMETER_LEASE_HORIZON_S` (default 8 days) in ms, checked against the spool age limit."""
    env = os.environ if env is None else env
    horizon = _env_seconds(env, "WATTMETER_LEASE_HORIZON_S", DEFAULT_HORIZON_S) * 1000
    check_horizon(horizon, spool_max_age_ms(env))
    return horizon


def bootstrap_servers(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def _contract(row: models.Lease) -> Lease:
    return Lease(row.lease_id, row.tenant_id, row.gpu_uuid, row.start_ms, row.end_ms, row.plan)


def current_timelines(session: Session, gpus: Sequence[str], now_ms: int, horizon_ms: int) -> list[GpuLeaseTimeline]:
    """The trimmed timeline of each GPU as the database holds it now, sorted by GPU.

    Reads only what the trimmed timeline needs: the leases open or ending after the cutoff,
    and per GPU the one dropped lease that ends last (it sets `complete_from_ms`)."""
    cutoff = now_ms - horizon_ms
    lease = models.Lease
    timelines: list[GpuLeaseTimeline] = []
    ordered = sorted(set(gpus))
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        by_gpu: dict[str, list[Lease]] = {gpu: [] for gpu in chunk}
        kept = select(lease).where(lease.gpu_uuid.in_(chunk), or_(lease.end_ms.is_(None), lease.end_ms > cutoff))
        for row in session.scalars(kept):
            by_gpu[row.gpu_uuid].append(_contract(row))
        last_dropped = (
            select(lease.gpu_uuid, func.max(lease.end_ms).label("end_ms"))
            .where(lease.gpu_uuid.in_(chunk), lease.end_ms <= cutoff)
            .group_by(lease.gpu_uuid)
            .subquery()
        )
        dropped = select(lease).join(
            last_dropped, and_(lease.gpu_uuid == last_dropped.c.gpu_uuid, lease.end_ms == last_dropped.c.end_ms)
        )
        for row in session.scalars(dropped):
            by_gpu[row.gpu_uuid].append(_contract(row))
        timelines += [trim_timeline(gpu, by_gpu[gpu], now_ms, horizon_ms) for gpu in chunk]
    return timelines


def make_producer(bootstrap: str, bootstrap_timeout_s: float = BOOTSTRAP_TIMEOUT_S) -> Any:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap.split(","),
            acks="all",
            enable_idempotence=True,
            max_block_ms=SEND_TIMEOUT_S * 1000,
            bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
            client_id="wattmeter-lease-outbox",
        )
    except KafkaError as exc:
        raise PublishFailed(
            f"cannot publish to {GPU_LEASES}: no Kafka broker answers at {bootstrap} ({exc!r})"
        ) from None


def send_acknowledged(producer: Any, topic: str, messages: Sequence[tuple[bytes, bytes]], failed: str) -> None:
    """Send each (key, value), flush, and check every acknowledgement; PublishFailed otherwise, its
    message `failed` with the broker's error in place of {exc}."""
    from kafka.errors import KafkaError

    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in messages]
        producer.flush(timeout=SEND_TIMEOUT_S)
        for future in futures:
            future.get(timeout=SEND_TIMEOUT_S)
    except KafkaError as exc:
        raise PublishFailed(failed.format(exc=repr(exc))) from None


def send_timelines(producer: Any, topic: str, timelines: Sequence[GpuLeaseTimeline]) -> None:
    """Send each timeline keyed by its GPU, flush, and check every acknowledgement."""
    send_acknowledged(
        producer,
        topic,
        [(timeline.gpu_uuid.encode(), timeline.to_json_bytes()) for timeline in timelines],
        f"{topic} did not acknowledge a lease timeline ({{exc}}); the outbox keeps it",
    )


def lock_publisher(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PUBLISH_LOCK})


def pending_count(ledger: Ledger) -> int:
    with ledger.transaction() as session:
        query = select(func.count()).select_from(models.LeaseOutbox).where(models.LeaseOutbox.published_ms.is_(None))
        return int(session.scalar(query) or 0)


def publish_pending(
    ledger: Ledger,
    bootstrap: str,
    horizon_ms: int,
    now_ms: int | None = None,
    *,
    topic: str = GPU_LEASES,
    spool_ms: int | None = None,
    batch_rows: int = BATCH_ROWS,
    bootstrap_timeout_s: float = BOOTSTRAP_TIMEOUT_S,
) -> int:
    """Publish the current timeline of every GPU with pending outbox rows, then mark those
    rows published. `now_ms` (default: the wall clock) is the instant the horizon counts
    back from. `bootstrap_timeout_s` bounds the wait for a first broker to answer. Returns how
    many timelines were sent; raises PublishFailed (rows stay pending)."""
    check_horizon(horizon_ms, spool_ms)
    producer = None
    sent = 0
    try:
        while True:
            with ledger.transaction() as session:
                lock_publisher(session)
                rows = session.execute(
                    select(models.LeaseOutbox.id, models.LeaseOutbox.gpu_uuid)
                    .where(models.LeaseOutbox.published_ms.is_(None))
                    .order_by(models.LeaseOutbox.id)
                    .limit(batch_rows)
                ).all()
                if not rows:
                    return sent
                at = wall_ms() if now_ms is None else now_ms
                timelines = current_timelines(session, [gpu for _, gpu in rows], at, horizon_ms)
                if producer is None:
                    producer = make_producer(bootstrap, bootstrap_timeout_s)
                send_timelines(producer, topic, timelines)
                ids = [row_id for row_id, _ in rows]
                for start in range(0, len(ids), _CHUNK):
                    session.execute(
                        update(models.LeaseOutbox)
                        .where(models.LeaseOutbox.id.in_(ids[start : start + _CHUNK]))
                        .values(published_ms=wall_ms())
                    )
                sent += len(timelines)
    finally:
        if producer is not None:
            producer.close(timeout=SEND_TIMEOUT_S)
