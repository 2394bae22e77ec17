"""Capacity offers: the GPUs the owner rents out in a valley, over a window, on some plans, with a
notice period for taking them back. Leases on the valley and interruptible plans are sold inside
an open offer, or refused (`OfferIndex.offer_for`).

An offer names GPU uuids, or a pool label (`gpu_pool_members`) resolved to uuids when it opens,
so a later change to the pool does not change what was offered. Closing an offer stops new
leases in it; leases already sold run on until they end or the owner preempts them
(`billing.market.preemption`). Times are integer ms since the epoch, UTC; a window is [start, end).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.common.instants import ms_to_iso
from billing.leases.errors import InvalidOffer, OfferConflict, OutsideOffer, UnknownOffer
from billing.ledger import models
from billing.ledger.db import audit, default_actor, now_ms
from schemas.leases import PLANS, Lease

OFFER_PLANS = ("valley", "interruptible")  # plans sold only inside an open offer
OPEN = "open"
CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    gpus: tuple[str, ...]
    start_ms: int
    end_ms: int
    plans: tuple[str, ...]
    notice_ms: int
    status: str = OPEN
    pool: str | None = None

    def covers(self, lease: Lease) -> bool:
        """Whether the lease may be sold in this offer: its GPU, its plan, inside the window."""
        inside = self.start_ms <= lease.start_ms < self.end_ms and (lease.end_ms is None or lease.end_ms <= self.end_ms)
        return self.status == OPEN and lease.plan in self.plans and lease.gpu_uuid in self.gpus and inside

    def describe(self) -> str:
        what = f"pool {self.pool} ({len(self.gpus)} GPUs)" if self.pool else f"{len(self.gpus)} GPUs"
        return (
            f"offer {self.offer_id}: {what}, {ms_to_iso(self.start_ms)}..{ms_to_iso(self.end_ms)}, "
            f"plans {', '.join(self.plans)}, notice {self.notice_ms // 1000} s, {self.status}"
        )


def _offer(row: models.CapacityOffer) -> Offer:
    return Offer(
        row.offer_id,
        tuple(row.gpus),
        row.start_ms,
        row.end_ms,
        tuple(row.plans),
        row.notice_ms,
        row.status,
        row.pool,
    )


def add_pool_members(session: Session, pool: str, gpus: Iterable[str]) -> int:
    """Label GPUs with a pool; returns how many were new to it."""
    added = 0
    for gpu in sorted(set(gpus)):
        if session.get(models.GpuPoolMember, (pool, gpu)) is None:
            session.add(models.GpuPoolMember(pool=pool, gpu_uuid=gpu))
            added += 1
    session.flush()
    return added


def pool_members(session: Session, pool: str) -> tuple[str, ...]:
    query = select(models.GpuPoolMember.gpu_uuid).where(models.GpuPoolMember.pool == pool)
    return tuple(sorted(session.scalars(query)))


def open_offer(
    session: Session,
    offer_id: str,
    *,
    start_ms: int,
    end_ms: int,
    notice_ms: int,
    gpus: Sequence[str] = (),
    pool: str | None = None,
    plans: Sequence[str] = OFFER_PLANS,
    actor: str | None = None,
) -> Offer:
    """Open an offer. Opening the same offer again (same fields) is a no-op."""
    if not offer_id.strip() or len(offer_id) > 128:
        raise InvalidOffer("an offer id must be 1 to 128 characters")
    if bool(gpus) == (pool is not None):
        raise InvalidOffer(f"offer {offer_id}: name GPUs or a pool, not both and not neither")
    members = pool_members(session, pool) if pool is not None else tuple(sorted(set(gpus)))
    if not members:
        raise InvalidOffer(f"offer {offer_id}: pool {pool!r} has no GPUs (add them with `offers pool`)")
    if end_ms <= start_ms:
        raise InvalidOffer(f"offer {offer_id}: its end {ms_to_iso(end_ms)} is not after its start")
    if notice_ms < 0:
        raise InvalidOffer(f"offer {offer_id}: a notice cannot be negative")
    unknown = sorted(set(plans) - set(PLANS))
    if not plans or unknown:
        raise InvalidOffer(f"offer {offer_id}: plans must be some of {', '.join(PLANS)} (got {', '.join(plans)})")
    asked = Offer(offer_id, members, start_ms, end_ms, tuple(sorted(set(plans))), notice_ms, OPEN, pool)
    held = session.get(models.CapacityOffer, offer_id)
    if held is not None:
        if _offer(held) == asked:
            return asked
        raise OfferConflict(f"offer {offer_id} exists with different fields or is closed: {_offer(held).describe()}")
    session.add(
        models.CapacityOffer(
            offer_id=offer_id,
            gpus=list(asked.gpus),
            pool=pool,
            start_ms=start_ms,
            end_ms=end_ms,
            plans=list(asked.plans),
            notice_ms=notice_ms,
            status=OPEN,
            created_ms=now_ms(),
            closed_ms=None,
        )
    )
    audit(session, actor or default_actor(), "offer.open", "offer", offer_id, gpus=len(members), pool=pool)
    session.flush()
    return asked


def close_offer(session: Session, offer_id: str, actor: str | None = None) -> Offer:
    """Stop selling in an offer (its leases run on). Closing a closed offer is a no-op."""
    row = session.get(models.CapacityOffer, offer_id)
    if row is None:
        raise UnknownOffer(f"unknown offer {offer_id!r}")
    if row.status != CLOSED:
        row.status = CLOSED
        row.closed_ms = now_ms()
        audit(session, actor or default_actor(), "offer.close", "offer", offer_id)
        session.flush()
    return _offer(row)


def get_offer(session: Session, offer_id: str) -> Offer:
    row = session.get(models.CapacityOffer, offer_id)
    if row is None:
        raise UnknownOffer(f"unknown offer {offer_id!r}")
    return _offer(row)


def list_offers(session: Session, status: str | None = None) -> list[Offer]:
    query = select(models.CapacityOffer).order_by(models.CapacityOffer.start_ms, models.CapacityOffer.offer_id)
    if status is not None:
        query = query.where(models.CapacityOffer.status == status)
    return [_offer(row) for row in session.scalars(query)]


class OfferIndex:
    """The open offers, read once, to place many leases (an import) without a query per lease."""

    def __init__(self, session: Session) -> None:
        self._offers = list_offers(session, OPEN)

    def offer_for(self, lease: Lease) -> str | None:
        """The offer a lease is sold in: None for a plan sold outside offers; OutsideOffer when no
        open offer covers a valley or interruptible lease."""
        if lease.plan not in OFFER_PLANS:
            return None
        for offer in self._offers:
            if offer.covers(lease):
                return offer.offer_id
        end = "open-ended" if lease.end_ms is None else f"to {ms_to_iso(lease.end_ms)}"
        raise OutsideOffer(
            f"lease {lease.lease_id} on the {lease.plan} plan (GPU {lease.gpu_uuid}, from {ms_to_iso(lease.start_ms)} "
            f"{end}) is in no open capacity offer: open one with `wattmeter-billing offers open`"
        )
