"""Preemption: the owner takes GPUs back. The lease ends at the preemption instant, the ledger records
that the owner ended it (`ended_by = "owner"`) and when the notice was given (`noticed_ms`), and the
notice goes to the tenant at once as a tenant event (`billing.market.notices`: the compacted
`gpu.lease.events` topic and a signed webhook).

The instant defaults to now + the notice the lease's offer promised. An earlier `--at` is a
short-notice preemption, which the rate card may credit (`[interruption]`, billing.pricing.rating).
Preempting a lease again at the same instant changes nothing; a lease that ends by itself before the
instant is left alone. Times are integer ms since the epoch, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from billing.common.instants import ms_to_iso
from billing.leases.service import add_outbox, lock_gpus
from billing.ledger import models
from billing.ledger.db import audit, default_actor, now_ms
from billing.market.errors import CannotPreempt
from billing.market.notices import PREEMPTION_NOTICE, event_id, record_event

OWNER = "owner"


@dataclass(frozen=True, slots=True)
class Preempted:
    lease_id: str
    tenant_id: str
    gpu_uuid: str
    offer_id: str | None
    noticed_ms: int
    ends_ms: int
    promised_notice_ms: int
    event_id: str

    @property
    def notice_ms(self) -> int:
        return self.ends_ms - self.noticed_ms


def _targets(
    session: Session, lease_ids: tuple[str, ...], gpu: str | None, offer_id: str | None, now: int
) -> list[models.Lease]:
    if not lease_ids and gpu is None and offer_id is None:
        raise CannotPreempt("name a lease, a GPU or an offer to preempt")
    query = select(models.Lease).where(or_(models.Lease.end_ms.is_(None), models.Lease.end_ms > now))
    if lease_ids:
        query = query.where(models.Lease.lease_id.in_(lease_ids))
    if gpu is not None:
        query = query.where(models.Lease.gpu_uuid == gpu)
    if offer_id is not None:
        query = query.where(models.Lease.offer_id == offer_id)
    rows = list(session.scalars(query.order_by(models.Lease.gpu_uuid, models.Lease.start_ms)))
    found = {row.lease_id for row in rows}
    for lease_id in lease_ids:
        if lease_id not in found:
            row = session.get(models.Lease, lease_id)
            if row is None:
                raise CannotPreempt(f"unknown lease {lease_id!r}")
            if row.ended_by == OWNER:
                continue  # already preempted: a retry
            raise CannotPreempt(f"lease {lease_id} has already ended (at {ms_to_iso(row.end_ms or 0)})")
    return rows


def preempt(
    session: Session,
    *,
    lease_ids: tuple[str, ...] = (),
    gpu: str | None = None,
    offer_id: str | None = None,
    at_ms: int | None = None,
    noticed_ms: int | None = None,
    actor: str | None = None,
) -> list[Preempted]:
    """Preempt the live leases named (by id, GPU or offer) at `at_ms` (default: now + the offer's
    notice); `noticed_ms` (default now) is when the notice is given. Returns what was preempted."""
    now = now_ms() if noticed_ms is None else noticed_ms
    rows = _targets(session, lease_ids, gpu, offer_id, now)
    lock_gpus(session, [row.gpu_uuid for row in rows])
    who = actor or default_actor()
    done: list[Preempted] = []
    for row in rows:
        offer = session.get(models.CapacityOffer, row.offer_id) if row.offer_id else None
        promised = offer.notice_ms if offer is not None else 0
        ends = now + promised if at_ms is None else at_ms
        if ends < now:
            raise CannotPreempt(f"lease {row.lease_id}: the preemption instant {ms_to_iso(ends)} is before the notice")
        if ends <= row.start_ms:
            raise CannotPreempt(
                f"lease {row.lease_id} starts at {ms_to_iso(row.start_ms)}, not before the preemption at "
                f"{ms_to_iso(ends)}: end it instead"
            )
        if row.end_ms is not None and row.end_ms <= ends:
            continue  # it ends by itself first
        row.end_ms, row.ended_by, row.noticed_ms = ends, OWNER, now
        event = event_id(PREEMPTION_NOTICE, row.lease_id, ends)
        payload = {
            "lease_id": row.lease_id,
            "gpu_uuid": row.gpu_uuid,
            "offer_id": row.offer_id,
            "noticed_at_ms": now,
            "ends_at_ms": ends,
            "notice_s": (ends - now) // 1000,
            "promised_notice_s": promised // 1000,
        }
        record_event(session, PREEMPTION_NOTICE, row.tenant_id, row.lease_id, payload, event, now)
        audit(session, who, "lease.preempt", "lease", row.lease_id, gpu_uuid=row.gpu_uuid, end_ms=ends, noticed_ms=now)
        done.append(Preempted(row.lease_id, row.tenant_id, row.gpu_uuid, row.offer_id, now, ends, promised, event))
    if done:
        add_outbox(session, [p.gpu_uuid for p in done])
    session.flush()
    return done
