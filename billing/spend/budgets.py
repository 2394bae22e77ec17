"""Budgets and their alerts. A tenant's budget per period is its own when it set it (API, tenant key)
and finance's when finance set it (CLI, API with a finance key): one of each at most, each with its
thresholds and where its alerts go. After the month-to-date spend is re-rated (`refresh`),
`check_budgets` records an alert event for each threshold newly crossed or forecast
(`billing.spend.alerts`), in the same transaction as nothing else: the event id is the budget, the
period, the threshold and the kind, so an alert is recorded once, ever. The deliverer
(`webhooks deliver --follow`) sends it, signed, to the budget's own URL, or to the tenant's endpoint
for a tenant's budget without one, and to `gpu.lease.events`; the portal lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.common.errors import BillingError
from billing.ledger import models
from billing.ledger.db import Ledger, audit, default_actor, now_ms
from billing.ledger.errors import LedgerError, NotFound
from billing.market.notices import event_id, record_event
from billing.market.webhooks import is_webhook_url, new_secret
from billing.pricing.money import to_minor
from billing.spend.alerts import due_alerts
from billing.spend.service import MonthToDate, month_to_date, refresh
from billing.usage.reader import Engine
from lake.store import LakeLocation

OWNERS = ("tenant", "finance")
BUDGET_CROSSED = "budget.threshold_crossed"
BUDGET_FORECAST = "budget.threshold_forecast"


class BudgetError(LedgerError):
    """A budget that cannot be set as asked."""


@dataclass(frozen=True)
class BudgetView:
    budget_id: str
    tenant_id: str
    owner: str
    amount: Decimal
    currency: str
    thresholds: tuple[int, ...]
    webhook_url: str | None


def _view(row: models.Budget) -> BudgetView:
    return BudgetView(
        row.budget_id, row.tenant_id, row.owner, row.amount, row.currency, tuple(row.thresholds), row.webhook_url
    )


def parse_thresholds(text: str) -> list[int]:
    """ "50,80,100" -> [50, 80, 100]: whole percentages 1..1000, ascending, no repeats."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BudgetError(f"thresholds {text!r}: give whole percentages such as 50,80,100") from None
    if not values or any(not 1 <= v <= 1000 for v in values) or len(set(values)) != len(values):
        raise BudgetError(f"thresholds {text!r}: give distinct whole percentages 1..1000, such as 50,80,100")
    return sorted(values)


def set_budget(
    session: Session,
    tenant_id: str,
    owner: str,
    amount: str | Decimal,
    thresholds: Sequence[int],
    webhook_url: str | None = None,
    actor: str | None = None,
) -> tuple[BudgetView, str | None]:
    """Set (or change) the `owner`'s budget of a tenant; returns it and the signing secret of its own
    webhook (a new one when the URL is new), or None without one."""
    if owner not in OWNERS:
        raise BudgetError(f"a budget's owner is one of {', '.join(OWNERS)}, not {owner!r}")
    tenant = session.get(models.Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"unknown tenant {tenant_id!r}")
    try:
        value = Decimal(str(amount))
        to_minor(value, tenant.currency)  # whole minor units of the tenant's currency
    except InvalidOperation:
        raise BudgetError(f"budget amount {amount!r} is not a decimal number such as 5000.00") from None
    except BillingError as exc:
        raise BudgetError(f"budget amount {amount!r}: {exc}") from None
    if value <= 0:
        raise BudgetError(f"budget amount {amount!r} must be above zero")
    if webhook_url is not None and not is_webhook_url(webhook_url):
        raise BudgetError(f"webhook URL {webhook_url!r} is not an http(s) URL")
    levels = sorted(set(int(t) for t in thresholds))
    budget_id = f"{tenant_id}/{owner}"
    row = session.get(models.Budget, budget_id)
    secret = None
    if row is None:
        secret = new_secret() if webhook_url else None
        row = models.Budget(
            budget_id=budget_id,
            tenant_id=tenant_id,
            owner=owner,
            amount=value,
            currency=tenant.currency,
            thresholds=levels,
            webhook_url=webhook_url,
            secret=secret,
            updated_ms=now_ms(),
        )
        session.add(row)
    else:
        if webhook_url != row.webhook_url:
            row.secret = new_secret() if webhook_url else None
        secret = row.secret
        row.amount, row.thresholds, row.webhook_url, row.updated_ms = value, levels, webhook_url, now_ms()
    audit(session, actor or default_actor(), "budget.set", "budget", budget_id, amount=str(value), thresholds=levels)
    session.flush()
    return _view(row), secret


def list_budgets(session: Session, tenant_id: str | None = None, owner: str | None = None) -> list[BudgetView]:
    query = select(models.Budget).order_by(models.Budget.tenant_id, models.Budget.owner)
    if tenant_id is not None:
        query = query.where(models.Budget.tenant_id == tenant_id)
    if owner is not None:
        query = query.where(models.Budget.owner == owner)
    return [_view(row) for row in session.scalars(query)]


def check_budgets(session: Session, mtd: MonthToDate) -> list[str]:
    """Record an alert for each threshold of the tenant's budgets newly crossed or forecast in
    `mtd`'s period; returns the ids of the alerts recorded now (none twice, ever)."""
    if mtd.status == "none":
        return []
    recorded = []
    for row in session.scalars(select(models.Budget).where(models.Budget.tenant_id == mtd.tenant_id)):
        if row.currency != mtd.currency:
            continue  # a budget in another currency than the invoices: never compared
        due = due_alerts(
            amount=row.amount,
            thresholds=row.thresholds,
            spent=mtd.subtotal,
            forecast=mtd.forecast_subtotal,
            currency=row.currency,
        )
        for percent, kind, level in due:
            kind_name = BUDGET_CROSSED if kind == "crossed" else BUDGET_FORECAST
            alert = event_id(kind_name, row.budget_id, mtd.period, percent)
            payload = {
                "budget_id": row.budget_id,
                "owner": row.owner,
                "period": mtd.period,
                "threshold_percent": percent,
                "threshold_amount": str(level),
                "budget_amount": str(row.amount),
                "spend": str(mtd.subtotal),
                "forecast": None if mtd.forecast_subtotal is None else str(mtd.forecast_subtotal),
                "forecast_method": mtd.forecast_method,
                "currency": row.currency,
                "kind": kind,
            }
            if record_event(session, kind_name, row.tenant_id, row.budget_id, payload, alert, now_ms(), budget=row):
                recorded.append(alert)
    return recorded


def refresh_and_alert(
    ledger: Ledger,
    usage_root: LakeLocation,
    tenant_ids: Sequence[str] | None = None,
    *,
    at_ms: int | None = None,
    engine: Engine | None = None,
    period: str | None = None,
) -> list[str]:
    """Re-rate the tenants' month to date (`billing.spend.service.refresh`), then record the budget
    alerts it calls for; returns the alert ids recorded now."""
    reports = refresh(ledger, usage_root, tenant_ids, at_ms=at_ms, engine=engine, period=period)
    recorded: list[str] = []
    for report in reports:
        for outcome in report.outcomes:
            with ledger.transaction() as session:
                mtd = month_to_date(session, outcome.tenant_id, report.period, at_ms=at_ms)
                recorded += check_budgets(session, mtd)
    return recorded


def alerts_of(session: Session, tenant_id: str, period: str, owners: Sequence[str] = OWNERS) -> list[dict[str, object]]:
    """The budget alerts of a tenant's period, oldest first (what the portal lists)."""
    query = (
        select(models.TenantEvent)
        .where(
            models.TenantEvent.tenant_id == tenant_id,
            models.TenantEvent.type.in_([BUDGET_CROSSED, BUDGET_FORECAST]),
        )
        .order_by(models.TenantEvent.created_ms, models.TenantEvent.event_id)
    )
    out = []
    for event in session.scalars(query):
        data = event.payload.get("data", {})
        if data.get("period") == period and data.get("owner") in owners:
            out.append({"id": event.event_id, "created_ms": event.created_ms, **data})
    return sorted(out, key=lambda a: (a["created_ms"], str(a["kind"]), int(str(a["threshold_percent"]))))
