"""The tenant portal: server-rendered pages (Jinja2, SVG charts, no JavaScript).

- `/login`: paste an API key; it is kept in the `wattmeter_key` cookie (HttpOnly, SameSite=Strict,
  Secure over HTTPS). A wrong key gets a clear message, never a trace. `POST /logout` (the header's
  sign-out button) drops it; a GET is a 405 and a sign-out posted from another site is refused, as a
  login is, so no other site can sign a user out.
- `/`: a tenant's month (default: the current month in the tenant's time zone; `?period=YYYY-MM`):
  GPU-hours and kWh per day, valley under peak, the totals, a per-GPU table and the invoices.
- `/days/{YYYY-MM-DD}`: one local day by hour.
- `/invoices/{number}`: an invoice, each line with the usage behind it.
- `/statements/{period}.csv|.pdf|.html`: the statement as a download (`billing.statements.statement`).

Who may see what is decided by `billing.web.auth` only (`scope_tenant`, `check_owner`,
`require_role`, `reads_tenant_data`): a tenant key sees its own tenant; a finance key picks any tenant
(`?tenant=`); an operator key reads no tenant's pages and is shown the way to the fleet's. Another
tenant's invoice is the same 404 page as one that does not exist. Numbers, money and dates follow
the browser's `Accept-Language` (Babel; en_US by default), in the tenant's currency and time zone.
"""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.common.errors import PeriodError
from billing.common.instants import ms_to_iso
from billing.common.periods import period_of
from billing.invoicing.errors import InvoicingError
from billing.ledger.db import now_ms
from billing.ledger.models import Tenant
from billing.readmodel.queries import (
    as_of_ms,
    gpu_table,
    invoice_detail,
    tenant_invoices,
    tenant_usage,
    usage_total,
)
from billing.spend.budgets import OWNERS, alerts_of
from billing.spend.service import month_to_date
from billing.statements import charts
from billing.statements import statement as statements
from billing.web.auth import (
    AuthError,
    Forbidden,
    NotFound,
    Principal,
    authenticate,
    check_owner,
    reads_tenant_data,
    scope_tenant,
)
from billing.web.deps import COOKIE, context, inline_document_policy, presented_key

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(env=statements.environment())

COOKIE_MAX_AGE_S = 12 * 3600
# Always fullmatch: `$` (and match) would let "2026-11\n" through, into a file name and a header.
PERIOD = re.compile(r"(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])")
DAY = re.compile(r"(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])")
MEDIA = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf", "html": "text/html; charset=utf-8"}
ROLE_NAMES = {"finance": "Finance", "operator": "Operator", "tenant": "Tenant"}


class PageError(Exception):
    """An answer as an HTML page: 400 (a bad period or day), 403 (a key of another role) or 404 (nothing this
    key may see); the operator's and finance's pages raise it too."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


NOT_FOUND = PageError(404, "Not found", "There is nothing here, or nothing this key may see.")


# -- who is asking --------------------------------------------------------------------------------


def page_principal(request: Request) -> Principal | None:
    """The principal of the request's key (cookie or header), or None: a page then redirects to /login."""
    key = presented_key(request)
    if not key:
        return None
    try:
        with context(request).ledger.transaction() as session:
            return authenticate(session, key)
    except AuthError:
        return None


def _locale(request: Request) -> str:
    return statements.negotiate_locale(request.headers.get("accept-language"))


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, not //host, no control or blank characters)."""
    if not target or not target.isprintable() or " " in target:
        return "/"
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = urlencode({"next": target}) if target != "/" else ""
    return RedirectResponse(f"/login{'?' + query if query else ''}", status_code=303)


def _base_context(request: Request, principal: Principal | None, session: Session | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"lang": _locale(request).split("_")[0], "nav": [], "principal": principal}
    if principal is None:
        return ctx
    name = ROLE_NAMES.get(principal.role, principal.role)
    if principal.is_tenant and session is not None and principal.tenant_id:
        tenant = session.get(Tenant, principal.tenant_id)
        name = tenant.name if tenant else name
    ctx["account_name"] = name
    ctx["account_role"] = f"{principal.role} key {principal.key_id}"
    nav = [("Usage" if principal.is_tenant else "Tenants", "/")]
    if principal.role == "finance":
        nav.append(("Finance", "/finance"))
    if principal.role == "operator":
        nav = [("Home", "/"), ("Operator", "/operator")]
    ctx["nav"] = nav
    return ctx


def _page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    """A page (its security headers, the strict CSP among them, are the app's: `billing.web.deps`)."""
    response = templates.TemplateResponse(request, name, ctx, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(request: Request, principal: Principal | None, error: PageError) -> HTMLResponse:
    with context(request).ledger.transaction() as session:
        ctx = _base_context(request, principal, session)
    ctx.update(title=error.title, message=error.message, status=error.status)
    return _page(request, "error.html", ctx, error.status)


# -- login ----------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    if page_principal(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    ctx = _base_context(request, None)
    ctx.update(hide_account=True, error=None, next=_safe_next(next))
    return _page(request, "login.html", ctx)


def _same_origin(request: Request) -> bool:
    """A login or logout form posted from another site is refused (CSRF): its Origin, when sent, is ours,
    and the browser does not call it cross-site (Sec-Fetch-Site)."""
    if request.headers.get("sec-fetch-site", "same-origin") in ("cross-site", "same-site"):
        return False
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "")


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, key: str = Form(""), next: str = Form("/")) -> Response:
    ctx = _base_context(request, None)
    ctx.update(hide_account=True, next=_safe_next(next))
    if not _same_origin(request):
        ctx["error"] = "This sign-in form was sent from another site, so it was refused. Open the portal and try again."
        return _page(request, "login.html", ctx, 403)
    try:
        with context(request).ledger.transaction() as session:
            authenticate(session, key.strip())
    except AuthError:
        ctx["error"] = (
            "That key was not accepted. Paste the whole key (it starts with wm_); "
            "if it still fails, it may have been revoked: ask for a new one."
        )
        return _page(request, "login.html", ctx, 401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        key.strip(),
        max_age=COOKIE_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", response_class=HTMLResponse)
def logout(request: Request) -> Response:
    """Sign out: POST only (a link or an image on another site cannot), from this site only."""
    if not _same_origin(request):
        refused = PageError(403, "Sign-out refused", "This sign-out was sent from another site, so it was refused.")
        return _error_page(request, page_principal(request), refused)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- the dashboard --------------------------------------------------------------------------------


def _month_options(current: str, chosen: str, invoice_periods: list[str]) -> list[str]:
    """The 12 months up to the current one, the chosen one and every invoiced one, newest first."""
    year, month = (int(x) for x in current.split("-"))
    months = set(invoice_periods) | {chosen}
    for _ in range(12):
        months.add(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return sorted(months, reverse=True)


def _shift(period: str, months: int) -> str:
    year, month = (int(x) for x in period.split("-"))
    index = year * 12 + month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _resolve_tenant(principal: Principal, requested: str | None) -> str | None:
    """The tenant a page shows: scoped by auth (a tenant key: its own); operator keys see no tenant pages."""
    if not reads_tenant_data(principal):
        return None
    return scope_tenant(principal, requested or None)


def _with_tenant(principal: Principal, tenant_id: str, path: str, **query: str) -> str:
    """A link that keeps a finance key's chosen tenant."""
    params = dict(query)
    if not principal.is_tenant:
        params["tenant"] = tenant_id
    return f"{path}?{urlencode(params)}" if params else path


def _check_period(period: str) -> None:
    if not PERIOD.fullmatch(period):
        raise PageError(400, "Not a month", f"{period[:20]!r} is not a month: write it as YYYY-MM, such as 2026-11.")


def _build_statement(session: Session, tenant_id: str, period: str, principal: Principal) -> statements.Statement:
    """The statement of a checked month; one that reaches outside 1970..9999 in the tenant's zone is a 400."""
    try:
        return statements.build_statement(session, tenant_id, period, include_drafts=not principal.is_tenant)
    except (InvoicingError, PeriodError) as exc:
        raise PageError(400, "Not a month", str(exc)) from None


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, period: str | None = None, tenant: str | None = None) -> Response:
    principal = page_principal(request)
    if principal is None:
        return _to_login(request)
    try:
        return _dashboard(request, principal, period, tenant)
    except (PageError, NotFound, Forbidden) as exc:
        return _error_page(request, principal, exc if isinstance(exc, PageError) else NOT_FOUND)


def _home(request: Request, principal: Principal, session: Session) -> Response:
    """Finance and operator keys: where to go (finance may open any tenant's portal)."""
    ctx = _base_context(request, principal, session)
    tenants = (
        list(session.execute(select(Tenant.tenant_id, Tenant.name).order_by(Tenant.name)))
        if principal.role == "finance"
        else []
    )
    ctx.update(tenants=tenants, role=principal.role)
    return _page(request, "home.html", ctx)


def _dashboard(request: Request, principal: Principal, period: str | None, requested: str | None) -> Response:
    locale = _locale(request)
    with context(request).ledger.transaction() as session:
        tenant_id = _resolve_tenant(principal, requested)
        if tenant_id is None:
            return _home(request, principal, session)
        row = session.get(Tenant, tenant_id)
        if row is None:
            raise NOT_FOUND
        current = period_of(now_ms(), row.timezone)
        period = (period or current).strip()
        _check_period(period)
        statement = _build_statement(session, tenant_id, period, principal)
        invoices = tenant_invoices(session, tenant_id, include_drafts=not principal.is_tenant)
        fresh = as_of_ms(session, period)
        spend = month_to_date(session, tenant_id, period) if period == current else None
        alerts = alerts_of(session, tenant_id, period, ("tenant",) if principal.is_tenant else OWNERS)
        ctx = _base_context(request, principal, session)
    fmt = statements.Formatter(locale, statement.currency, statement.timezone)
    pair = statements.usage_charts(
        statement.days, fmt, href=lambda day: _with_tenant(principal, tenant_id, f"/days/{day}"), prefix="usage"
    )
    ctx.update(
        s=statement,
        fmt=fmt,
        charts=pair,
        invoices=list(reversed(invoices)),
        period=period,
        current=current,
        months=_month_options(current, period, [i.period for i in invoices]),
        previous=_shift(period, -1),
        following=_shift(period, 1) if period < current else None,
        link=lambda path, **q: _with_tenant(principal, tenant_id, path, **q),
        finance_view=not principal.is_tenant,
        as_of=None if fresh is None else ms_to_iso(fresh)[:16].replace("T", " ") + " UTC",
        spend=spend,
        alerts=alerts,
    )
    return _page(request, "dashboard.html", ctx)


# -- one day by hour ------------------------------------------------------------------------------


@router.get("/days/{day}", response_class=HTMLResponse)
def day_view(request: Request, day: str, tenant: str | None = None) -> Response:
    principal = page_principal(request)
    if principal is None:
        return _to_login(request)
    try:
        if not DAY.fullmatch(day):
            raise PageError(400, "Not a day", f"{day[:20]!r} is not a day: write it as YYYY-MM-DD.")
        try:
            local_day = date.fromisoformat(day)
        except ValueError:
            raise PageError(400, "Not a day", f"{day!r} is not a day of the calendar.") from None
        locale = _locale(request)
        with context(request).ledger.transaction() as session:
            tenant_id = _resolve_tenant(principal, tenant)
            if tenant_id is None:
                raise NOT_FOUND
            row = session.get(Tenant, tenant_id)
            if row is None:
                raise NOT_FOUND
            zone = ZoneInfo(row.timezone)
            start = int(datetime(local_day.year, local_day.month, local_day.day, tzinfo=zone).timestamp() * 1000)
            nxt = local_day + timedelta(days=1)
            end = int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).timestamp() * 1000)
            hours = tenant_usage(session, tenant_id, start, end, "hour")
            gpus = gpu_table(session, tenant_id, start, end)
            ctx = _base_context(request, principal, session)
            currency, name, zone_name = row.currency, row.name, row.timezone
        fmt = statements.Formatter(locale, currency, zone_name)
        pair = statements.usage_charts(hours, fmt, grain="hour", prefix="hourly")
        total = usage_total(hours)
        periods = charts.order_series({n for h in hours for n in h.periods})
        ctx.update(
            day=local_day,
            hours=hours,
            gpus=gpus,
            total=total,
            periods=periods,
            fmt=fmt,
            charts=pair,
            tenant_name=name,
            timezone=zone_name,
            period=f"{local_day.year:04d}-{local_day.month:02d}",
            link=lambda path, **q: _with_tenant(principal, tenant_id, path, **q),
            previous_day=(local_day - timedelta(days=1)).isoformat(),
            next_day=nxt.isoformat(),
        )
        return _page(request, "day.html", ctx)
    except (PageError, NotFound, Forbidden) as exc:
        return _error_page(request, principal, exc if isinstance(exc, PageError) else NOT_FOUND)


# -- an invoice -----------------------------------------------------------------------------------


@router.get("/invoices/{number}", response_class=HTMLResponse)
def invoice_page(request: Request, number: str) -> Response:
    principal = page_principal(request)
    if principal is None:
        return _to_login(request)
    try:
        if not reads_tenant_data(principal):
            raise NOT_FOUND
        locale = _locale(request)
        with context(request).ledger.transaction() as session:
            detail = invoice_detail(
                session,
                number,
                owner_check=lambda owner: check_owner(principal, owner),
                include_drafts=not principal.is_tenant,
            )
            ctx = _base_context(request, principal, session)
        inv = detail.invoice
        fmt = statements.Formatter(locale, inv.currency, detail.tenant_timezone)
        ctx.update(
            d=detail,
            inv=inv,
            fmt=fmt,
            link=lambda path, **q: _with_tenant(principal, inv.tenant_id, path, **q),
        )
        return _page(request, "invoice.html", ctx)
    except (PageError, NotFound, Forbidden):
        return _error_page(request, principal, NOT_FOUND)


# -- statements -----------------------------------------------------------------------------------


@router.get("/statements/{period}.{form}")
def statement_download(request: Request, period: str, form: str, tenant: str | None = None) -> Response:
    principal = page_principal(request)
    if principal is None:
        return _to_login(request)
    try:
        if form not in MEDIA:
            raise NOT_FOUND
        _check_period(period)
        locale = _locale(request)
        with context(request).ledger.transaction() as session:
            tenant_id = _resolve_tenant(principal, tenant)
            if tenant_id is None:
                raise NOT_FOUND
            statement = _build_statement(session, tenant_id, period, principal)
    except (PageError, NotFound, Forbidden) as exc:
        return _error_page(request, principal, exc if isinstance(exc, PageError) else NOT_FOUND)
    body: str | bytes
    headers = {"Cache-Control": "no-store"}
    if form == "csv":
        body = statements.render_csv(statement)
    elif form == "pdf":
        body = statements.render_pdf(statement, locale)
    else:  # shown in the browser: its own policy allows its one inline <style>, by nonce
        nonce = secrets.token_urlsafe(18)
        body = statements.render_html(statement, locale, nonce=nonce)
        headers["Content-Security-Policy"] = inline_document_policy(nonce)
    filename = f"{statements.file_stem(statement)}.{form}"
    disposition = "inline" if form == "html" else "attachment"
    headers["Content-Disposition"] = f'{disposition}; filename="{filename}"'
    return Response(body, media_type=MEDIA[form], headers=headers)
