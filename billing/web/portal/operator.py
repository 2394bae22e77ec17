"""The operator's and finance's pages (server-rendered, no JavaScript):

- `/operator`: the fleet yield report of a month (operator and finance keys): key figures, the share
  of valley capacity sold per model as a bar, and the table per GPU model with the fleet's totals;
  `?period=YYYY-MM&timezone=ZONE&calendar_card=NAME&include_drafts=1` as for the API;
- `/operator/yield.csv`: the same report as CSV (one row per model and currency, then the fleet);
- `/finance`: the month at a glance (finance keys): invoices by status with totals per currency, the
  Stripe sync (pushed, failed with its last error, not pushed) and payment states, the month close
  step, and the reconciliation with its flagged rows.

Who may see what is decided by `billing.web.auth.require_role` only. Without a key the browser is
sent to `/login` (and back after); a key of another role gets a 403 page. Numbers and money follow
the browser's Accept-Language (Babel); money stays Decimal until it is formatted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency, format_decimal, format_percent
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from billing.common.errors import PeriodError
from billing.invoicing.errors import InvoicingError
from billing.ledger.models import INVOICE_FINALIZED, Invoice
from billing.pricing.money import minor_units, round_half_even
from billing.reports.errors import ReportError
from billing.reports.yield_report import rate_places
from billing.statements.formatting import DEFAULT_LOCALE
from billing.web.auth import FINANCE_ROLES, FLEET_ROLES, Forbidden, Principal, require_role
from billing.web.deps import context
from billing.web.portal.pages import PageError, page_principal
from schemas.units import MJ_PER_KWH, MS_PER_HOUR

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

YIELD_ROLES = FLEET_ROLES
CLOSE_STEPS = ("started", "rated", "reviewed", "finalized", "pushed", "reconciled")  # billing.close.service.STEPS
PAGE_HEADERS = {"Cache-Control": "no-store"}  # nosniff, the CSP and no framing: the app's (billing.web.deps)


# -- who and how -----------------------------------------------------------------------------------


def page_locale(request: Request) -> str:
    """The first locale of Accept-Language that Babel knows, else en_US."""
    header = request.headers.get("accept-language") or ""
    for part in header.split(",")[:10]:
        tag = part.split(";")[0].strip()
        if not tag or tag == "*":
            continue
        try:
            return str(Locale.parse(tag.replace("-", "_")))
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return DEFAULT_LOCALE


class Fmt:
    """Formatting for one page in one locale: exact values in, text out."""

    def __init__(self, locale: str) -> None:
        self.locale = locale

    def money(self, amount: Decimal, currency: str) -> str:
        return str(format_currency(amount, currency, locale=self.locale))

    def money_text(self, text: str, currency: str) -> str:
        """A decimal string (as the reports write money) formatted; anything else shown as it is."""
        try:
            return self.money(Decimal(text), currency)
        except (InvalidOperation, ValueError):
            return text

    def rate(self, value: Fraction | None, currency: str) -> str:
        """A money rate with two more places than the currency's minor unit ($1.2514)."""
        if value is None:
            return "–"
        return str(
            format_currency(
                round_half_even(value, rate_places(currency)),
                currency,
                locale=self.locale,
                currency_digits=False,
                decimal_quantization=False,
            )
        )

    def per_unit(self, value: Fraction | None, currency: str) -> str:
        """Money per item (per GPU), rounded to the currency's minor unit."""
        if value is None:
            return "–"
        return self.money(round_half_even(value, minor_units(currency)), currency)

    def number(self, value: Fraction | Decimal | int | None, places: int = 2) -> str:
        if value is None:
            return "–"
        pattern = "#,##0." + "0" * places if places else "#,##0"
        return str(format_decimal(round_half_even(value, places), format=pattern, locale=self.locale))

    def percent(self, value: Fraction | None) -> str:
        if value is None:
            return "–"
        return str(format_percent(round_half_even(value, 4), format="#,##0.0%", locale=self.locale))

    def hours(self, ms: int) -> str:
        return self.number(Fraction(ms, MS_PER_HOUR), 2)

    def kwh(self, mj: int) -> str:
        return self.number(Fraction(mj, MJ_PER_KWH), 2)


def _nav(principal: Principal) -> list[tuple[str, str]]:
    if principal.role == "finance":
        return [("Tenants", "/"), ("Finance", "/finance"), ("Fleet yield", "/operator")]
    return [("Home", "/"), ("Operator", "/operator")]


def _page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, ctx, status_code=status)
    response.headers.update(PAGE_HEADERS)
    return response


def _base(request: Request, principal: Principal, active: str) -> dict[str, Any]:
    locale = page_locale(request)
    return {
        "lang": locale.split("_")[0],
        "nav": _nav(principal),
        "active": active,
        "account_name": principal.role.capitalize(),
        "account_role": f"{principal.role} key {principal.key_id}",
        "fmt": Fmt(locale),
    }


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def _error(request: Request, principal: Principal, error: PageError, active: str) -> HTMLResponse:
    ctx = _base(request, principal, active)
    ctx.update(title=error.title, message=error.message, status=error.status)
    return _page(request, "error.html", ctx, error.status)


def _check_period(period: str) -> str:
    from billing.web.reports_api import PERIOD_PATTERN

    if not re.fullmatch(PERIOD_PATTERN, period):
        raise PageError(400, "Not a month", f"{period[:20]!r} is not a month: write it as YYYY-MM, such as 2026-11.")
    return period


def _shift(period: str, months: int) -> str:
    year, month = (int(x) for x in period.split("-"))
    index = year * 12 + month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def default_period(request: Request) -> str:
    """The newest period with an issued invoice (the last month closed), else the current UTC month."""
    with context(request).ledger.transaction() as session:
        newest = session.scalar(select(func.max(Invoice.period)).where(Invoice.status == INVOICE_FINALIZED))
    if newest:
        return str(newest)
    now = datetime.now(timezone.utc)
    return f"{now.year:04d}-{now.month:02d}"


def _guarded(request: Request, roles: Sequence[str], active: str) -> tuple[Principal | None, Response | None]:
    principal = page_principal(request)
    if principal is None:
        return None, _to_login(request)
    try:
        require_role(principal, *roles)
    except Forbidden:
        who = "an operator or finance" if len(roles) > 1 else "a finance"
        error = PageError(403, "Not for this key", f"This page needs {who} key. Sign in with one to see it.")
        return principal, _error(request, principal, error, active)
    return principal, None


# -- the yield report ------------------------------------------------------------------------------


def _yield_report(request: Request, period: str, tz: str, card: str | None, drafts: bool) -> Any:
    from billing.web.reports_api import build_yield, time_zones

    if tz not in time_zones():
        raise PageError(400, "Not a time zone", f"{tz[:40]!r} is not an IANA time zone name, such as UTC.")
    try:
        return build_yield(request, period, tz, card or None, None, drafts)
    except RequestValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        raise PageError(400, "Cannot build the report", str(first.get("msg", "invalid request"))) from None


def _window_text(start_ms: int, end_ms: int, zone: str) -> str:
    from zoneinfo import ZoneInfo

    lo = datetime.fromtimestamp(start_ms / 1000, ZoneInfo(zone))
    hi = datetime.fromtimestamp(end_ms / 1000, ZoneInfo(zone))
    return f"{lo:%Y-%m-%d %H:%M} – {hi:%Y-%m-%d %H:%M}"


def _bar_rows(report: Any, fmt: Fmt) -> list[dict[str, Any]]:
    """Valley capacity sold per model and for the fleet: geometry in percent (float: pixels only)."""
    out = []
    for row in (*report.models, report.fleet):
        share = row.valley_share
        out.append(
            {
                "label": row.model or "Fleet",
                "fleet": not row.model,
                "width": 0.0 if share is None else round(float(share) * 100, 2),
                "text": fmt.percent(share),
                "detail": f"{fmt.hours(row.valley_leased_ms)} of {fmt.hours(row.valley_available_ms)} valley GPU-h",
            }
        )
    return out


@router.get("/operator", response_class=HTMLResponse)
def yield_page(
    request: Request,
    period: str | None = None,
    timezone: str = "UTC",
    calendar_card: str | None = None,
    include_drafts: bool = False,
) -> Response:
    principal, refused = _guarded(request, YIELD_ROLES, "/operator")
    if refused is not None or principal is None:
        return refused or _to_login(request)
    try:
        chosen = _check_period(period) if period else default_period(request)
        report = _yield_report(request, chosen, timezone, calendar_card, include_drafts)
    except PageError as exc:
        return _error(request, principal, exc, "/operator")
    ctx = _base(request, principal, "/operator")
    query = {
        "timezone": timezone,
        **({"calendar_card": calendar_card} if calendar_card else {}),
        **({"include_drafts": "1"} if include_drafts else {}),
    }
    ctx.update(
        report=report,
        period=chosen,
        timezone=timezone,
        include_drafts=include_drafts,
        calendar_card=calendar_card or "",
        currencies=report.currencies,
        bars=_bar_rows(report, ctx["fmt"]),
        window=_window_text(report.start_ms, report.end_ms, timezone),
        previous=f"/operator?{urlencode({'period': _shift(chosen, -1), **query})}",
        next=f"/operator?{urlencode({'period': _shift(chosen, 1), **query})}",
        csv_href=f"/operator/yield.csv?{urlencode({'period': chosen, **query})}",
        json_href=f"/api/v1/yield?{urlencode({'period': chosen, **query})}",
    )
    return _page(request, "operator_yield.html", ctx)


@router.get("/operator/yield.csv")
def yield_csv(
    request: Request,
    period: str | None = None,
    timezone: str = "UTC",
    calendar_card: str | None = None,
    include_drafts: bool = False,
) -> Response:
    principal, refused = _guarded(request, YIELD_ROLES, "/operator")
    if refused is not None or principal is None:
        return refused or _to_login(request)
    from billing.reports.yield_report import csv_text

    try:
        chosen = _check_period(period) if period else default_period(request)
        report = _yield_report(request, chosen, timezone, calendar_card, include_drafts)
    except PageError as exc:
        return _error(request, principal, exc, "/operator")
    return Response(
        csv_text(report),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="wattmeter-yield-{chosen}.csv"',
            "Cache-Control": "no-store",
        },
    )


# -- finance ---------------------------------------------------------------------------------------


def _money_rows(totals: Mapping[str, Mapping[str, str]], fmt: Fmt) -> list[dict[str, str]]:
    return [
        {"currency": c, **{k: fmt.money_text(v, c) for k, v in money.items()}, "raw_total": money.get("total", "")}
        for c, money in totals.items()
    ]


@router.get("/finance", response_class=HTMLResponse)
def finance_page(request: Request, period: str | None = None) -> Response:
    principal, refused = _guarded(request, FINANCE_ROLES, "/finance")
    if refused is not None or principal is None:
        return refused or _to_login(request)
    from billing.reports.finance import overview

    ctx_ = context(request)
    try:
        chosen = _check_period(period) if period else default_period(request)
        data = overview(ctx_.ledger, ctx_.usage_root, chosen)
    except (PageError, ReportError, InvoicingError, PeriodError) as exc:
        error = exc if isinstance(exc, PageError) else PageError(400, "Cannot build the overview", str(exc))
        return _error(request, principal, error, "/finance")
    ctx = _base(request, principal, "/finance")
    fmt: Fmt = ctx["fmt"]
    statuses = [
        {"status": status, "count": part["count"], "rows": _money_rows(part["totals"], fmt)}
        for status, part in data["invoices"]["by_status"].items()
    ]
    recon = data["reconciliation"]
    ctx.update(
        period=chosen,
        data=data,
        statuses=statuses,
        stripe=data["stripe"],
        close=data["close"],
        recon=recon,
        recon_totals=[
            {
                "currency": c,
                **{k: fmt.money_text(str(v), c) for k, v in t.items() if k != "tenants"},
                "tenants": t.get("tenants", 0),
            }
            for c, t in recon["totals"].items()
        ],
        close_steps=CLOSE_STEPS,
        close_reached=CLOSE_STEPS.index(data["close"]["step"])
        if data["close"] and data["close"]["step"] in CLOSE_STEPS
        else -1,
        previous=f"/finance?{urlencode({'period': _shift(chosen, -1)})}",
        next=f"/finance?{urlencode({'period': _shift(chosen, 1)})}",
        json_href=f"/api/v1/finance/overview?{urlencode({'period': chosen})}",
        recon_href=f"/api/v1/reconciliation?{urlencode({'period': chosen})}",
    )
    return _page(request, "finance_overview.html", ctx)
