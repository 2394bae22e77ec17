"""GET /api/v1/spend: a tenant's month-to-date spend and its forecast (`billing.spend.service`).

A tenant key reads its own; a finance key names the tenant (`tenant=`); an operator key gets 403,
as for usage. Money is exact decimal strings; `as_of` says when the figures were rated.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from billing.readmodel import queries
from billing.spend.service import month_to_date
from billing.web.api import ERRORS, JsonErrors, PeriodQuery, TenantQuery, iso, read, required_tenant
from billing.web.auth import Principal
from billing.web.deps import principal

router = APIRouter(route_class=JsonErrors)


class SpendLineOut(BaseModel):
    kind: str
    description: str
    amount: str


class SpendOut(BaseModel):
    tenant_id: str
    period: str
    currency: str
    status: str = Field(description="draft: month to date; finalized: the period is issued; none: nothing rated yet")
    as_of: str | None = Field(description="when the figures were rated")
    lines: list[SpendLineOut]
    subtotal: str
    tax: str
    total: str
    amount_due: str
    forecast_subtotal: str | None = Field(description="before tax, at period end; null once issued")
    forecast_method: str


@router.get("/spend", response_model=SpendOut, responses=ERRORS, tags=["spend"])
def get_spend(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    tenant: TenantQuery = None,
    period: PeriodQuery = None,
) -> SpendOut:
    """Month-to-date spend: the period's invoice as it would stand if the month closed now, and the
    forecast to period end (its method stated)."""
    tenant_id = required_tenant(who, tenant)
    with read(request) as session:
        queries.get_tenant(session, tenant_id)  # an unknown tenant is a 404
        mtd = month_to_date(session, tenant_id, period)
    return SpendOut(
        tenant_id=mtd.tenant_id,
        period=mtd.period,
        currency=mtd.currency,
        status=mtd.status,
        as_of=iso(mtd.rated_ms),
        lines=[SpendLineOut(kind=ln.kind, description=ln.description, amount=str(ln.amount)) for ln in mtd.lines],
        subtotal=str(mtd.subtotal),
        tax=str(mtd.tax),
        total=str(mtd.total),
        amount_due=str(mtd.amount_due),
        forecast_subtotal=None if mtd.forecast_subtotal is None else str(mtd.forecast_subtotal),
        forecast_method=mtd.forecast_method,
    )
