"""The valley market's JSON API under /api/v1, for the operator: capacity offers and preemption.

  GET  /offers[?status=open|closed]   operator and finance keys
  POST /offers                        open an offer (operator keys); the same request again: no change
  POST /offers/{offer_id}/close       stop selling in it (its leases run on)
  POST /leases/preempt                preempt by lease ids, GPU or offer; `at` defaults to now + the notice

The work is `billing.market`'s; this module only maps HTTP to it. A refusal is `{"error": "..."}`:
404 for an unknown offer or lease, 409 for a conflict (an offer id taken with other fields, a lease
that cannot be preempted), 422 for a field that cannot be. A preemption commits its tenant events
in the same transaction; `wattmeter-billing webhooks deliver --follow` sends them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from billing.leases import offers
from billing.leases.errors import InvalidOffer
from billing.ledger.errors import Conflict, LedgerError, NotFound
from billing.market.preemption import preempt
from billing.web.api import _ID_SCHEMA as ID_SCHEMA
from billing.web.api import ERRORS, ID_CHECK, Ident, JsonErrors, TimeValue, iso
from billing.web.auth import FLEET_ROLES, LEASE_WRITE_ROLES, Principal, require_role
from billing.web.deps import context, error_response, principal

router = APIRouter(route_class=JsonErrors)
Plan = Literal["on_demand", "valley", "interruptible", "reserved"]
MARKET_ERRORS = {
    **ERRORS,
    409: {"description": "an offer id taken with other fields, or a lease that cannot be preempted"},
}


class OfferIn(BaseModel):
    offer_id: Ident
    gpus: list[Ident] = Field(default_factory=list, max_length=100_000, description="GPU uuids (or a pool)")
    pool: Ident | None = Field(default=None, description="a pool label (`wattmeter-billing offers pool`)")
    start: TimeValue
    end: TimeValue
    plans: list[Plan] = Field(default=["valley", "interruptible"], min_length=1)  # offers.OFFER_PLANS
    notice_s: int = Field(ge=0, le=7 * 86_400, description="seconds of notice before a preemption")


class OfferOut(BaseModel):
    offer_id: str
    gpus: list[str]
    pool: str | None
    start_ms: int
    end_ms: int
    start: str
    end: str
    plans: list[str]
    notice_s: int
    status: str

    @classmethod
    def of(cls, offer: offers.Offer) -> OfferOut:
        return cls(
            offer_id=offer.offer_id,
            gpus=list(offer.gpus),
            pool=offer.pool,
            start_ms=offer.start_ms,
            end_ms=offer.end_ms,
            start=str(iso(offer.start_ms)),
            end=str(iso(offer.end_ms)),
            plans=list(offer.plans),
            notice_s=offer.notice_ms // 1000,
            status=offer.status,
        )


class OfferListOut(BaseModel):
    offers: list[OfferOut]


class PreemptIn(BaseModel):
    lease_ids: list[Ident] = Field(default_factory=list, max_length=100_000)
    gpu_uuid: Ident | None = None
    offer_id: Ident | None = None
    at: TimeValue | None = Field(default=None, description="when the leases end (default: now + the offer's notice)")


class PreemptedOut(BaseModel):
    lease_id: str
    tenant_id: str
    gpu_uuid: str
    offer_id: str | None
    noticed_at: str
    ends_at: str
    notice_s: int
    promised_notice_s: int
    event_id: str


class PreemptOut(BaseModel):
    preempted: list[PreemptedOut]


def _market_error(exc: LedgerError) -> Response:
    if isinstance(exc, NotFound):
        return error_response(404, str(exc))
    if isinstance(exc, Conflict):
        return error_response(409, str(exc))
    if isinstance(exc, InvalidOffer):
        return error_response(422, str(exc))
    return error_response(400, str(exc))


@router.get("/offers", response_model=OfferListOut, responses=ERRORS, tags=["market"])
def get_offers(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    status: Annotated[Literal["open", "closed"] | None, Query()] = None,
) -> OfferListOut:
    """Capacity offers by start (operator and finance keys)."""
    require_role(who, *FLEET_ROLES)
    with context(request).ledger.transaction() as session:
        return OfferListOut(offers=[OfferOut.of(o) for o in offers.list_offers(session, status)])


@router.post("/offers", response_model=OfferOut, status_code=201, responses=MARKET_ERRORS, tags=["market"])
def post_offer(
    request: Request, who: Annotated[Principal, Depends(principal)], body: Annotated[OfferIn, Body()]
) -> OfferOut | Response:
    """Open a capacity offer (operator keys): GPUs or a pool, a window, plans, a notice period."""
    require_role(who, *LEASE_WRITE_ROLES)
    try:
        with context(request).ledger.transaction() as session:
            offer = offers.open_offer(
                session,
                body.offer_id,
                start_ms=body.start,
                end_ms=body.end,
                notice_ms=body.notice_s * 1000,
                gpus=body.gpus,
                pool=body.pool,
                plans=body.plans,
                actor=f"api:{who.key_id}",
            )
    except LedgerError as exc:
        return _market_error(exc)
    return OfferOut.of(offer)


@router.post("/offers/{offer_id}/close", response_model=OfferOut, responses=MARKET_ERRORS, tags=["market"])
def post_offer_close(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    offer_id: Annotated[str, Path(json_schema_extra=ID_SCHEMA), ID_CHECK],
) -> OfferOut | Response:
    """Stop selling in an offer (operator keys); its leases run on until they end or are preempted."""
    require_role(who, *LEASE_WRITE_ROLES)
    try:
        with context(request).ledger.transaction() as session:
            offer = offers.close_offer(session, offer_id, actor=f"api:{who.key_id}")
    except LedgerError as exc:
        return _market_error(exc)
    return OfferOut.of(offer)


@router.post("/leases/preempt", response_model=PreemptOut, responses=MARKET_ERRORS, tags=["market"])
def post_preempt(
    request: Request, who: Annotated[Principal, Depends(principal)], body: Annotated[PreemptIn, Body()]
) -> PreemptOut | Response:
    """Take GPUs back (operator keys): the leases named end at `at`, ended by the owner, and each
    tenant is sent a notice (the gpu.lease.events topic and its signed webhook)."""
    require_role(who, *LEASE_WRITE_ROLES)
    try:
        with context(request).ledger.transaction() as session:
            done = preempt(
                session,
                lease_ids=tuple(body.lease_ids),
                gpu=body.gpu_uuid,
                offer_id=body.offer_id,
                at_ms=body.at,
                actor=f"api:{who.key_id}",
            )
    except LedgerError as exc:
        return _market_error(exc)
    return PreemptOut(
        preempted=[
            PreemptedOut(
                lease_id=p.lease_id,
                tenant_id=p.tenant_id,
                gpu_uuid=p.gpu_uuid,
                offer_id=p.offer_id,
                noticed_at=str(iso(p.noticed_ms)),
                ends_at=str(iso(p.ends_ms)),
                notice_s=p.notice_ms // 1000,
                promised_notice_s=p.promised_notice_ms // 1000,
                event_id=p.event_id,
            )
            for p in done
        ]
    )
