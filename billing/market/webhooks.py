"""Signed webhooks to tenants: Stripe's scheme, retried with backoff, each event delivered once.

The signature header `Wattmeter-Signature: t=<unix s>,v1=<hex>` is HMAC-SHA256 with the endpoint's
secret over `"<t>.<body>"`, exactly as Stripe signs (`sign`, `verify`). The event id travels in
`Wattmeter-Event-Id`; it is the receiver's idempotency key.

Delivery (`deliver_due`):
1. A due pending delivery is *claimed* in a short transaction: its next attempt moves past the
   request timeout, so a second deliverer running at the same time does not send it too.
2. The POST is made outside any transaction. A 2xx answer is the receiver's acknowledgement: the
   delivery becomes `delivered` and is never sent again. Anything else (an error status, a refused
   connection, a timeout) counts an attempt, keeps the error, and schedules the next attempt after
   `backoff_ms(attempts)` (1 s, 2 s, 4 s ... capped at an hour). After `max_attempts` it is
   `failed`: it stays listed (`wattmeter-billing webhooks list`) and `webhooks retry` re-queues it.
3. A receiver that answered but whose answer was lost (a timeout after it processed the event)
   sees the event again, with the same id: at-least-once on the wire, once per acknowledging
   receiver that dedupes by id, and nothing is lost.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.ledger import models
from billing.ledger.db import Ledger, audit, default_actor, now_ms
from billing.market.errors import DeliveryError
from billing.market.notices import event_bytes

SIGNATURE_HEADER = "Wattmeter-Signature"
EVENT_ID_HEADER = "Wattmeter-Event-Id"
DEFAULT_TOLERANCE_S = 300
MAX_ATTEMPTS = 8
REQUEST_TIMEOUT_S = 10.0
MAX_BACKOFF_MS = 3_600_000
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp_s`."""
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_s},v1={mac}"


def verify(secret: str, header: str, body: bytes, now_s: int, tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance_s` of `now_s` (what a receiver checks)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now_s - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff_ms(attempts: int) -> int:
    """The wait after the `attempts`-th failed attempt: 1 s doubling, capped at an hour."""
    return int(min(1000 * 2 ** max(attempts - 1, 0), MAX_BACKOFF_MS))


def is_webhook_url(url: str) -> bool:
    """Whether `url` is an absolute http(s) URL a delivery can be POSTed to."""
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def new_secret() -> str:
    """A fresh signing secret, in Stripe's `whsec_` form."""
    return "whsec_" + secrets.token_hex(24)


def set_endpoint(
    session: Session, tenant_id: str, url: str, secret: str | None = None, actor: str | None = None
) -> str:
    """Set a tenant's endpoint; returns its signing secret (a new one unless given)."""
    if not is_webhook_url(url):
        raise DeliveryError(f"webhook URL {url!r} is not an http(s) URL")
    if session.get(models.Tenant, tenant_id) is None:
        raise DeliveryError(f"unknown tenant {tenant_id!r}")
    secret = secret or new_secret()
    row = session.get(models.WebhookEndpoint, tenant_id)
    if row is None:
        session.add(models.WebhookEndpoint(tenant_id=tenant_id, url=url, secret=secret, created_ms=now_ms()))
    else:
        row.url, row.secret = url, secret
    audit(session, actor or default_actor(), "webhook.set", "tenant", tenant_id, url=url)
    session.flush()
    return secret


@dataclass(frozen=True, slots=True)
class DeliveryView:
    event_id: str
    tenant_id: str
    url: str
    state: str
    attempts: int
    next_attempt_ms: int
    last_status: int | None
    last_error: str | None
    delivered_ms: int | None


def _view(row: models.WebhookDelivery) -> DeliveryView:
    return DeliveryView(
        row.event_id,
        row.tenant_id,
        row.url,
        row.state,
        row.attempts,
        row.next_attempt_ms,
        row.last_status,
        row.last_error,
        row.delivered_ms,
    )


def list_deliveries(session: Session, tenant_id: str | None = None, state: str | None = None) -> list[DeliveryView]:
    query = select(models.WebhookDelivery).order_by(models.WebhookDelivery.created_ms, models.WebhookDelivery.event_id)
    if tenant_id is not None:
        query = query.where(models.WebhookDelivery.tenant_id == tenant_id)
    if state is not None:
        query = query.where(models.WebhookDelivery.state == state)
    return [_view(row) for row in session.scalars(query)]


def retry_failed(session: Session, event: str | None = None, actor: str | None = None) -> int:
    """Re-queue failed deliveries (one, or all); returns how many."""
    query = select(models.WebhookDelivery).where(models.WebhookDelivery.state == FAILED)
    if event is not None:
        query = query.where(models.WebhookDelivery.event_id == event)
    rows = list(session.scalars(query))
    for row in rows:
        row.state, row.attempts, row.next_attempt_ms = PENDING, 0, now_ms()
        audit(session, actor or default_actor(), "webhook.retry", "event", row.event_id)
    session.flush()
    return len(rows)


@dataclass(frozen=True, slots=True)
class _Claim:
    event_id: str
    url: str
    secret: str
    body: bytes


def _target(session: Session, row: models.WebhookDelivery) -> tuple[str, str] | None:
    """(URL, signing secret) of a delivery: its budget's own, or its tenant's endpoint."""
    if row.budget_id is not None:
        budget = session.get(models.Budget, row.budget_id)
        if budget is None or budget.webhook_url is None or budget.secret is None:
            return None
        return budget.webhook_url, budget.secret
    endpoint = session.get(models.WebhookEndpoint, row.tenant_id)
    return None if endpoint is None else (endpoint.url, endpoint.secret)


def _claim(ledger: Ledger, at_ms: int, limit: int, timeout_s: float) -> list[_Claim]:
    with ledger.transaction() as session:
        query = (
            select(models.WebhookDelivery)
            .where(models.WebhookDelivery.state == PENDING, models.WebhookDelivery.next_attempt_ms <= at_ms)
            .order_by(models.WebhookDelivery.next_attempt_ms, models.WebhookDelivery.event_id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        claims = []
        for row in session.scalars(query):
            target = _target(session, row)
            event = session.get(models.TenantEvent, row.event_id)
            if target is None or event is None:
                row.state, row.last_error = FAILED, "the webhook endpoint is gone"
                continue
            row.next_attempt_ms = at_ms + int(timeout_s * 1000) + 1000  # claimed: no one else sends it now
            claims.append(_Claim(row.event_id, target[0], target[1], event_bytes(event.payload)))
        return claims


def _record(ledger: Ledger, claim: _Claim, status: int | None, error: str | None, max_attempts: int) -> None:
    with ledger.transaction() as session:
        row = session.get(models.WebhookDelivery, claim.event_id)
        if row is None or row.state != PENDING:
            return
        row.attempts += 1
        row.last_status = status
        at = now_ms()
        if error is None:
            row.state, row.delivered_ms, row.last_error = DELIVERED, at, None
            return
        row.last_error = error
        if row.attempts >= max_attempts:
            row.state = FAILED
        else:
            row.next_attempt_ms = at + backoff_ms(row.attempts)


def deliver_due(
    ledger: Ledger,
    *,
    client: Any = None,
    at_ms: int | None = None,
    limit: int = 100,
    timeout_s: float = REQUEST_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
) -> tuple[int, int]:
    """One pass over the due deliveries; returns (delivered, failed attempts). `client` is an
    `httpx.Client` (one is made when not given)."""
    import httpx

    claims = _claim(ledger, now_ms() if at_ms is None else at_ms, limit, timeout_s)
    if not claims:
        return 0, 0
    own = client is None
    http = httpx.Client(timeout=timeout_s) if own else client
    delivered = failed = 0
    try:
        for claim in claims:
            timestamp = now_ms() // 1000
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(claim.secret, timestamp, claim.body),
                EVENT_ID_HEADER: claim.event_id,
            }
            status: int | None = None
            error: str | None
            try:
                response = http.post(claim.url, content=claim.body, headers=headers, timeout=timeout_s)
                status = response.status_code
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except httpx.TimeoutException:
                error = f"no answer within {timeout_s:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            _record(ledger, claim, status, error, max_attempts)
            if error is None:
                delivered += 1
            else:
                failed += 1
    finally:
        if own:
            http.close()
    return delivered, failed
