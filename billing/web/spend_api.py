"""Spend and budgets under /api/v1 (`billing.spend`):

  GET  /spend     a tenant's month-to-date spend and its forecast
  GET  /budgets   a tenant's budgets (a tenant key: its own; a finance key: every owner's)
  POST /budgets   set a budget: a tenant key sets the tenant's own, a finance key finance's

A tenant key reads its own tenant; a finance key names the tenant (`tenant=`); an operator key gets
403, as for usage. Money is exact decimal strings; `as_of` says when the figures were rated.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from billing.ledger.errors import LedgerError
from billing.readmodel import queries
from billing.spend.budgets import BudgetView, list_budgets, parse_thresholds, set_budget
from billing.spend.service import month_to_date
from billing.web.api import ERRORS, Ident, JsonErrors, PeriodQuery, TenantQuery, iso, read, required_tenant
from billing.web.auth import Principal
from billing.web.deps import context, error_response, principal

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


class BudgetIn(BaseModel):
    tenant_id: Ident | None = Field(default=None, description="a finance key names the tenant")
    amount: str = Field(max_length=32, description="per period, in the tenant's currency, such as 5000.00")
    thresholds: list[int] = Field(default=[50, 80, 100], min_length=1, max_length=20)
    webhook_url: str | None = Field(default=None, max_length=2048, description="its own alerts' endpoint")


class BudgetOut(BaseModel):
    budget_id: str
    tenant_id: str
    owner: str
    amount: str
    currency: str
    thresholds: list[int]
    webhook_url: str | None
    secret: str | None = Field(default=None, description="set once: the signing secret of a new webhook URL")

    @classmethod
    def of(cls, view: BudgetView, secret: str | None = None) -> BudgetOut:
        return cls(
            budget_id=view.budget_id,
            tenant_id=view.tenant_id,
            owner=view.owner,
            amount=str(view.amount),
            currency=view.currency,
            thresholds=list(view.thresholds),
            webhook_url=view.webhook_url,
            secret=secret,
        )


class BudgetListOut(BaseModel):
    budgets: list[BudgetOut]


@router.get("/budgets", response_model=BudgetListOut, responses=ERRORS, tags=["spend"])
def get_budgets(
    request: Request, who: Annotated[Principal, Depends(principal)], tenant: TenantQuery = None
) -> BudgetListOut:
    """A tenant's budgets: a tenant key sees its own budget only; a finance key every owner's."""
    tenant_id = required_tenant(who, tenant)
    with read(request) as session:
        queries.get_tenant(session, tenant_id)
        views = list_budgets(session, tenant_id, "tenant" if who.is_tenant else None)
    return BudgetListOut(budgets=[BudgetOut.of(v) for v in views])


@router.post("/budgets", response_model=BudgetOut, status_code=201, responses=ERRORS, tags=["spend"])
def post_budget(
    request: Request, who: Annotated[Principal, Depends(principal)], body: Annotated[BudgetIn, Body()]
) -> BudgetOut | Response:
    """Set a budget per period: a tenant key sets its tenant's own, a finance key finance's for the tenant
    it names; each alerts once per threshold and period (a signed webhook, and an entry in the portal)."""
    tenant_id = required_tenant(who, body.tenant_id)
    owner = "tenant" if who.is_tenant else "finance"
    try:
        with context(request).ledger.transaction() as session:
            queries.get_tenant(session, tenant_id)
            thresholds = parse_thresholds(",".join(str(t) for t in body.thresholds))
            view, secret = set_budget(
                session, tenant_id, owner, body.amount, thresholds, body.webhook_url, actor=f"api:{who.key_id}"
            )
    except LedgerError as exc:
        return error_response(422, str(exc))
    return BudgetOut.of(view, secret)
