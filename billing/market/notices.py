"""Tenant events (a preemption notice; budget alerts later): written in the transaction that causes
them, then sent two ways, each from its own outbox column so that neither can lose one:

- to the compacted Kafka topic `gpu.lease.events`, keyed by the event's key (a lease id), for the
  tenant's own automation (`publish_events`: acks=all, idempotent, marked only once acknowledged);
- to the tenant's webhook endpoint, signed, retried, delivered once (`billing.market.webhooks`).

An event id is derived from what happened (`event_id`), so recording the same happening twice
writes nothing new.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billing.leases.outbox import (
    BOOTSTRAP_TIMEOUT_S,
    SEND_TIMEOUT_S,
    lock_publisher,
    make_producer,
    send_acknowledged,
)
from billing.ledger import models
from billing.ledger.db import Ledger, now_ms
from schemas.topics import GPU_LEASE_EVENTS

PREEMPTION_NOTICE = "lease.preemption_notice"


def event_id(kind: str, *parts: object) -> str:
    """The id of one happening: the same happening always has the same id."""
    text = "\x1f".join([kind, *(str(part) for part in parts)])
    return "evt_" + hashlib.sha256(text.encode()).hexdigest()[:24]


def record_event(
    session: Session,
    kind: str,
    tenant_id: str,
    key: str,
    payload: dict[str, Any],
    event: str,
    at_ms: int,
    budget: models.Budget | None = None,
) -> bool:
    """Write an event (and its webhook delivery: to the tenant's endpoint, or to `budget`'s own when
    it has one); False if it exists. A finance budget without a URL of its own alerts no one's
    endpoint: its alerts are on the topic and in the portal only."""
    if session.get(models.TenantEvent, event) is not None:
        return False
    body = {"id": event, "type": kind, "created_ms": at_ms, "tenant_id": tenant_id, "data": payload}
    session.add(
        models.TenantEvent(
            event_id=event,
            type=kind,
            tenant_id=tenant_id,
            key=key,
            payload=body,
            created_ms=at_ms,
            kafka_published_ms=None,
        )
    )
    own = budget is not None and budget.webhook_url is not None
    endpoint = (
        None
        if own or (budget is not None and budget.owner != "tenant")
        else session.get(models.WebhookEndpoint, tenant_id)
    )
    url = budget.webhook_url if own and budget is not None else (endpoint.url if endpoint is not None else None)
    if url is not None:
        session.add(
            models.WebhookDelivery(
                event_id=event,
                tenant_id=tenant_id,
                url=url,
                state="pending",
                attempts=0,
                next_attempt_ms=at_ms,
                created_ms=at_ms,
                budget_id=budget.budget_id if own and budget is not None else None,
            )
        )
    session.flush()
    return True


def event_bytes(payload: dict[str, Any]) -> bytes:
    """The one serialization of an event, on the topic and in a webhook body (what is signed)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def publish_events(
    ledger: Ledger,
    bootstrap: str,
    *,
    topic: str = GPU_LEASE_EVENTS,
    batch: int = 1000,
    bootstrap_timeout_s: float = BOOTSTRAP_TIMEOUT_S,
) -> int:
    """Send every event not yet on the topic, then mark them; returns how many were sent.
    Raises PublishFailed (they stay pending) when the broker does not acknowledge."""
    producer = None
    sent = 0
    try:
        while True:
            with ledger.transaction() as session:
                lock_publisher(session)
                rows = list(
                    session.scalars(
                        select(models.TenantEvent)
                        .where(models.TenantEvent.kafka_published_ms.is_(None))
                        .order_by(models.TenantEvent.created_ms, models.TenantEvent.event_id)
                        .limit(batch)
                    )
                )
                if not rows:
                    return sent
                if producer is None:
                    producer = make_producer(bootstrap, bootstrap_timeout_s)
                send_acknowledged(
                    producer,
                    topic,
                    [(row.key.encode(), event_bytes(row.payload)) for row in rows],
                    f"{topic} did not acknowledge an event ({{exc}}); it stays pending",
                )
                ids = [row.event_id for row in rows]
                session.execute(
                    update(models.TenantEvent)
                    .where(models.TenantEvent.event_id.in_(ids))
                    .values(kafka_published_ms=now_ms())
                )
                sent += len(rows)
    finally:
        if producer is not None:
            producer.close(timeout=SEND_TIMEOUT_S)
