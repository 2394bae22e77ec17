"""Month-to-date spend: a tenant's current period as it would be invoiced if the month closed now,
and where it is heading.

The figure IS the period's draft invoice: `refresh` re-rates the current period with the month's
own path (`billing.invoicing.service.run_period`: GPU time by period, energy, lease rounding,
tiers, the market's credits, discount, commitment, tax), so the invoice issued at the close equals
the last month-to-date figure taken after the last usage, line for line, by construction. A draft
is regenerated deterministically and only when its usage changed (no audit entry otherwise), and a
tenant key never sees drafts as invoices: only here, as spend. The forecast is
`billing.pricing.forecast`'s, its method stated with it.

`refresh` is what `rollup --follow --spend` runs after each step for the tenants whose hours it
rebuilt; `wattmeter-billing spend --tenant T --refresh` runs it by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.common.periods import period_bounds, period_of
from billing.invoicing.service import RunReport, run_period
from billing.ledger.db import Ledger, now_ms
from billing.ledger.errors import NotFound
from billing.ledger.lines import line_from_row
from billing.ledger.models import INVOICE_VOID, Invoice, Tenant
from billing.ledger.store import card_spans
from billing.pricing.forecast import METHOD, forecast_subtotal
from billing.pricing.lines import InvoiceLine
from billing.pricing.money import zero
from billing.usage.reader import Engine
from lake.store import LakeLocation


@dataclass(frozen=True)
class MonthToDate:
    tenant_id: str
    period: str
    currency: str
    start_ms: int
    end_ms: int
    status: str  # "draft" (month to date), "finalized" (issued: the period closed), "none" (nothing rated yet)
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    amount_due: Decimal
    forecast_subtotal: Decimal | None  # None once the period is issued
    forecast_method: str
    rated_ms: int | None  # when the figures were rated (their "as of")
    invoice_id: int | None


def month_to_date(session: Session, tenant_id: str, period: str | None = None, at_ms: int | None = None) -> MonthToDate:
    """The tenant's spend in `period` (default: its current month, in its time zone) as it stands."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"unknown tenant {tenant_id!r}")
    now = now_ms() if at_ms is None else at_ms
    period = period or period_of(now, tenant.timezone)
    start, end = period_bounds(period, tenant.timezone)
    invoice = session.scalar(
        select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.period == period, Invoice.status != INVOICE_VOID)
    )
    currency = tenant.currency
    if invoice is None:
        nothing = zero(currency)
        return MonthToDate(
            tenant_id=tenant_id,
            period=period,
            currency=currency,
            start_ms=start,
            end_ms=end,
            status="none",
            lines=(),
            subtotal=nothing,
            tax=nothing,
            total=nothing,
            amount_due=nothing,
            forecast_subtotal=nothing if now < end else None,
            forecast_method=METHOD,
            rated_ms=None,
            invoice_id=None,
        )
    lines = tuple(line_from_row(row) for row in sorted(invoice.lines, key=lambda row: row.position))
    forecast = None
    if invoice.status != "finalized":
        spans = card_spans(session, tenant_id, start, end)
        card = spans[-1].card if spans else None
        forecast = forecast_subtotal(
            lines,
            currency=currency,
            elapsed_ms=min(now, end) - start,
            period_ms=end - start,
            discount_percent=card.discount_percent if card else Decimal(0),
            commitment=card.commitment if card else None,
        )
    return MonthToDate(
        tenant_id,
        period,
        currency,
        start,
        end,
        invoice.status,
        lines,
        invoice.subtotal,
        invoice.tax,
        invoice.total,
        invoice.amount_due,
        forecast,
        METHOD,
        invoice.rated_ms,
        invoice.id,
    )


def refresh(
    ledger: Ledger,
    usage_root: LakeLocation,
    tenant_ids: Iterable[str] | None = None,
    *,
    at_ms: int | None = None,
    engine: Engine | None = None,
    period: str | None = None,
) -> list[RunReport]:
    """Re-rate the current period (or `period`) of these tenants (default: every tenant that is not
    internal)."""
    now = now_ms() if at_ms is None else at_ms
    with ledger.transaction() as session:
        query = select(Tenant).where(Tenant.internal.is_(False))
        if tenant_ids is not None:
            query = query.where(Tenant.tenant_id.in_(sorted(set(tenant_ids))))
        by_period: dict[str, list[str]] = defaultdict(list)
        for tenant in session.scalars(query):
            by_period[period or period_of(now, tenant.timezone)].append(tenant.tenant_id)
    return [
        run_period(ledger, usage_root, label, "spend", tenant_ids=sorted(tenants), engine=engine)
        for label, tenants in sorted(by_period.items())
    ]
