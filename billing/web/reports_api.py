"""The JSON API of the reports, under /api/v1: the fleet yield report (operator and finance keys),
finance's month at a glance and the reconciliation (finance keys).

Scoped only through `billing.web.auth.require_role`: a tenant key gets 403 (these are about the
whole fleet or every tenant; there is nothing of its own to show). Money and ratios are exact
decimal strings, quantities integers (GPU-ms, mJ) beside GPU-hour and kWh strings. Bad input is a
422 `{"error": "..."}` that names the parameter.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import available_timezones

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from billing.common.errors import PeriodError
from billing.invoicing.errors import InvoicingError
from billing.reports.errors import ReportError
from billing.web.api import ERRORS, ID_CHECK, JsonErrors, invalid
from billing.web.auth import FINANCE_ROLES, FLEET_ROLES, Principal, require_role
from billing.web.deps import context, principal

router = APIRouter(route_class=JsonErrors)  # errors in the API's one format, as billing.web.api's

PERIOD_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"  # as billing.web.api's
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
YIELD_ROLES = FLEET_ROLES  # who reads what: billing.web.auth
PARAMETER_OF = {"rate_card": "calendar_card", "timezone": "timezone"}  # an error's subject -> its query parameter


@lru_cache(maxsize=1)
def time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _zone(value: str) -> str:
    if value not in time_zones():
        raise PydanticCustomError("invalid", "must be an IANA time zone name, such as UTC or Europe/Berlin")
    return value


def _period(value: str) -> str:
    if not re.fullmatch(PERIOD_PATTERN, value):
        raise PydanticCustomError("invalid", "write a month as YYYY-MM, such as 2026-11")
    return value


Period = Annotated[
    str, Query(json_schema_extra={"pattern": PERIOD_PATTERN}, description="a month, YYYY-MM"), AfterValidator(_period)
]
Zone = Annotated[
    str,
    Query(max_length=64, description="the operator's time zone: the month is [1st 00:00, next 1st 00:00) there"),
    AfterValidator(_zone),
]
CalendarCard = Annotated[
    str | None,
    Query(
        json_schema_extra={"pattern": ID_PATTERN, "minLength": 1, "maxLength": 128},
        description="the rate card whose time-of-use calendar says which hours are valley "
        "(default: the card most contracts in the period name)",
    ),
    ID_CHECK,
]
ValleyPeriod = Annotated[
    list[str] | None,
    Query(description="calendar periods that count as valley (repeatable; default: valley)", max_length=8),
]


# -- the fleet yield report ------------------------------------------------------------------------


class RevenueOut(BaseModel):
    revenue: str = Field(description="pre-tax revenue in this currency")
    per_gpu: str | None
    per_gpu_hour_available: str | None
    per_kwh: str | None = Field(description="per kWh metered (no PUE); null without energy")


class GpuMsOut(BaseModel):
    available: int = Field(description="leased + idle metered GPU time, ms")
    leased: int
    idle: int
    internal: int = Field(description="the owner's own use (internal tenants): not for sale, not in available")
    busy: int = Field(description="busy GPU time, leased and idle")
    busy_leased: int
    valley_available: int
    valley_leased: int
    astride_valley_boundary: int = Field(description="GPU time in hours cut by a valley boundary (in neither)")


class GpuHoursOut(BaseModel):
    available: str
    leased: str
    idle: str
    internal: str
    busy: str
    valley_available: str
    valley_leased: str


class YieldRowOut(BaseModel):
    model: str | None = Field(description="the GPU model; null on the fleet row")
    gpus: int
    gpu_ms: GpuMsOut
    gpu_hours: GpuHoursOut
    energy_mj: int
    energy_kwh: str
    energy_leased_kwh: str
    utilization: str | None = Field(description="busy over leased, 0..1")
    leased_share: str | None = Field(description="leased over available, 0..1")
    valley_share_sold: str | None = Field(description="leased valley GPU time over available valley GPU time")
    busy_gpu_hours_per_kwh: str | None
    revenue: dict[str, RevenueOut] = Field(description="per currency (amounts in two currencies are never added)")


class CalendarOut(BaseModel):
    card: str
    chosen_by: str
    versions: list[str]
    timezone: list[str]
    valley_periods: list[str]
    valley_hours: int
    hours_astride_a_boundary: int


class RevenueBasisOut(BaseModel):
    invoices: str = Field(description="which invoices count: issued, or issued and draft")
    count: int
    pre_tax_total: dict[str, str] = Field(description="per currency: the sum of their subtotals (= fleet revenue)")
    unallocated: dict[str, str]


class WindowOut(BaseModel):
    start: str
    end: str
    hours: int


class OfferHourOut(BaseModel):
    hour: str = Field(description="the UTC hour's start")
    offered_gpu_ms: int
    sold_gpu_ms: int
    fill_rate: str | None


class OfferOut(BaseModel):
    offer_id: str
    gpus: int
    offered_gpu_ms: int = Field(description="its GPUs x its window inside the report's")
    sold_gpu_ms: int = Field(description="leased time of the leases sold in it, inside both windows")
    offered_gpu_hours: str
    sold_gpu_hours: str
    fill_rate: str | None = Field(description="sold over offered, 0..1")
    hours: list[OfferHourOut] = Field(description="per UTC hour the offer is open in the window")


class YieldOut(BaseModel):
    period: str
    timezone: str
    window: WindowOut
    calendar: CalendarOut | None
    revenue_basis: RevenueBasisOut
    currencies: list[str]
    models: list[YieldRowOut]
    fleet: YieldRowOut
    energy: dict[str, Any] | None = Field(
        description="with a utility tariff: its energy cost and the gross margin per model and fleet, and valley alone"
    )
    offers: list[OfferOut] = Field(description="capacity offers overlapping the window, with their fill rate")
    market_revenue_per_offered_gpu_hour: dict[str, str | None] = Field(
        description="per currency: valley and interruptible plan revenue over every offer's offered GPU-hours"
    )
    notes: list[str]


def build_yield(
    request: Request, period: str, timezone: str, calendar_card: str | None, valley: list[str] | None, drafts: bool
) -> Any:
    """The report (for the API, the page and the CSV); a ReportError becomes a 422 naming a parameter."""
    from billing.reports.service import CACHE

    if calendar_card is not None and not (re.fullmatch(ID_PATTERN, calendar_card) and calendar_card.isprintable()):
        raise invalid("calendar_card", "must be 1 to 128 printable characters")
    for name in valley or []:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", name):
            raise invalid("valley_period", "must be a period name such as valley or off_peak")
    try:
        return CACHE.get(
            context(request).ledger,
            period,
            timezone=timezone,
            calendar_card=calendar_card,
            valley_periods=tuple(valley or ("valley",)),
            include_drafts=drafts,
        )
    except (ReportError, InvoicingError, PeriodError) as exc:  # a month outside the instants' bound in some zone: a 422
        raise invalid(PARAMETER_OF.get(exc.subject or "", "period"), str(exc)) from None


@router.get("/yield", response_model=YieldOut, responses=ERRORS, tags=["reports"])
def get_yield(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    period: Period,
    timezone: Zone = "UTC",
    calendar_card: CalendarCard = None,
    valley_period: ValleyPeriod = None,
    include_drafts: Annotated[bool, Query(description="count draft invoices as revenue too")] = False,
) -> YieldOut:
    """The fleet yield report per GPU model and for the fleet (operator and finance keys): GPUs,
    GPU-hours available (leased + idle), leased and idle, utilization, kWh, busy GPU-hours per kWh,
    revenue per GPU, per GPU-hour available and per kWh, and the share of valley capacity sold.
    Revenue: the pre-tax total of the issued invoices labelled `period`, per currency."""
    require_role(who, *YIELD_ROLES)
    from billing.reports.yield_render import to_json

    report = build_yield(request, period, timezone, calendar_card, valley_period, include_drafts)
    return YieldOut.model_validate(to_json(report))


# -- finance ---------------------------------------------------------------------------------------


class StatusTotalsOut(BaseModel):
    count: int
    totals: dict[str, dict[str, str]] = Field(description="currency -> subtotal, tax, total, amount_due")


class InvoicesOut(BaseModel):
    count: int
    by_status: dict[str, StatusTotalsOut] = Field(description="draft, finalized, void")
    tenants_without_invoice: list[str]


class SyncFailureOut(BaseModel):
    invoice: str | None
    tenant_id: str
    state: str
    attempts: int
    last_error: str
    last_attempt: str | None


class StripeOut(BaseModel):
    not_pushed: int
    in_progress: int
    pushed: int
    failed: int
    voided: int
    failures: list[SyncFailureOut]
    payment_status: dict[str, int] = Field(description="paid, open, failed, void, uncollectible, none")
    amount_paid: dict[str, str]


class CloseOut(BaseModel):
    step: str = Field(description="the last step done: started, rated, reviewed, finalized, pushed, reconciled")
    started: str | None
    updated: str | None
    actor: str
    summary: dict[str, Any]


class ReconciliationSummaryOut(BaseModel):
    explained: bool
    unexplained: list[str]
    flags: list[str]
    totals: dict[str, dict[str, Any]]
    flagged: list[dict[str, Any]] = Field(description="every row not explained, with its tenant and invoice")
    tenants: list[dict[str, Any]]
    error: str | None = None


class FinanceOverviewOut(BaseModel):
    period: str
    tenants: int
    invoices: InvoicesOut
    stripe: StripeOut
    close: CloseOut | None
    reconciliation: ReconciliationSummaryOut


@router.get("/finance/overview", response_model=FinanceOverviewOut, responses=ERRORS, tags=["reports"])
def get_finance_overview(
    request: Request, who: Annotated[Principal, Depends(principal)], period: Period
) -> FinanceOverviewOut:
    """The month at a glance (finance keys): invoices by status with totals per currency, the Stripe
    sync and payment states, the month close step, and the reconciliation with its flagged rows."""
    require_role(who, *FINANCE_ROLES)
    from billing.reports.finance import overview

    ctx = context(request)
    try:
        return FinanceOverviewOut.model_validate(overview(ctx.ledger, ctx.usage_root, period))
    except (ReportError, InvoicingError, PeriodError) as exc:
        raise invalid("period", str(exc)) from None


@router.get("/reconciliation", responses=ERRORS, tags=["reports"])
def get_reconciliation(
    request: Request, who: Annotated[Principal, Depends(principal)], period: Period
) -> dict[str, Any]:
    """The period's reconciliation, metered <-> invoiced <-> collected per tenant (finance keys), as
    `wattmeter-billing reconcile --json --no-stripe` prints it, plus `flagged`: every row not
    explained. Collected is wattmeter's mirror of Stripe's webhooks."""
    require_role(who, *FINANCE_ROLES)
    from billing.reports.finance import CACHE, reconciliation_json

    ctx = context(request)
    try:
        return reconciliation_json(CACHE.get(ctx.ledger, ctx.usage_root, period))
    except (ReportError, InvoicingError, PeriodError) as exc:
        raise invalid("period", str(exc)) from None
