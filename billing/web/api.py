"""The JSON API under /api/v1: usage, the per-GPU table, invoices with the usage behind each line,
statements, and leases. OpenAPI at /api/v1/openapi.json.

Every endpoint takes the request's `principal` (401 without a valid key) and scopes ONLY through
`billing.web.auth`: `scope_tenant` for a tenant named in the query or path, `check_owner` for an
invoice fetched by number or id, `scope_leases` and `require_role` for what a role may not do (403).
A tenant key that names another tenant, or another tenant's invoice, gets the 404 an unknown one
gets, word for word. An operator key reads no tenant's usage, invoices or statements (403).
Tenant keys see issued invoices only (finalized or void): a draft changes until finance finalizes it.

Quantities are exact integers (GPU time and busy time in ms, energy in mJ) beside display strings
(GPU-hours, kWh with 6 places; utilization 0..1); money is a decimal string in the invoice's currency.
Times come back as ms since the epoch and as ISO 8601; they are accepted as ISO 8601 (a date or a
time without offset is the tenant's local time for usage, UTC for leases) or integer ms, never a
boolean, and must lie in 1970..9999 (`schemas.units.check_instant_ms`). Errors are
`{"error": "one line"}`; bad input is a 422 that names the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, Field, PlainValidator
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from billing.common.errors import PeriodError
from billing.common.periods import period_bounds
from billing.invoicing.errors import InvoicingError
from billing.leases import service as leases
from billing.leases.errors import InvalidLease, UnknownLease, UnknownTenant
from billing.ledger.errors import Conflict, LedgerError
from billing.ledger.lines import stored_values
from billing.readmodel import queries
from billing.web.auth import (
    LEASE_WRITE_ROLES,
    Principal,
    check_owner,
    require_role,
    require_tenant_data,
    scope_leases,
    scope_tenant,
)
from billing.web.deps import context, error_response, principal
from schemas.units import MS_PER_DAY, check_instant_ms


class JsonErrors(APIRoute):
    """The API's routes: an HTTPException raised while FastAPI reads a request (a body that is not
    JSON, 400) is answered in the API's one error format, `{"error": "..."}`, like every other error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as exc:
                message = str(exc.detail).splitlines()[0] if exc.detail else "invalid request"
                return error_response(exc.status_code, message[:1].lower() + message[1:])

        return answer


router = APIRouter(route_class=JsonErrors)

MAX_DAY_WINDOW_MS = 366 * MS_PER_DAY
MAX_HOUR_WINDOW_MS = 32 * MS_PER_DAY
_ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"  # no control characters; the ledger's String(128)
_PERIOD_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"
_INTEGER = re.compile(r"[0-9]{1,16}")  # always fullmatch
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ErrorOut(BaseModel):
    error: str = Field(description="one line saying what went wrong; never names another tenant's objects")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no key, or a wrong, malformed or revoked one"},
    403: {"model": ErrorOut, "description": "the key's role may not do this"},
    404: {"model": ErrorOut, "description": "nothing this key may see by that name"},
    422: {"model": ErrorOut, "description": "a parameter is missing or invalid (the message names it)"},
}


# -- inputs ---------------------------------------------------------------------------------------


def _matching(pattern: str, message: str) -> AfterValidator:
    """A check with a one-line message of our own (the pattern itself is in the OpenAPI document)."""
    compiled = re.compile(pattern)

    def check(value: str | None) -> str | None:
        if value is not None and not (compiled.fullmatch(value) and value.isprintable()):
            raise PydanticCustomError("invalid", message)
        return value

    return AfterValidator(check)


ID_CHECK = _matching(_ID_PATTERN, "must be 1 to 128 printable characters")
PERIOD_CHECK = _matching(_PERIOD_PATTERN, "write a month as YYYY-MM, such as 2026-11")
_ID_SCHEMA = {"pattern": _ID_PATTERN, "minLength": 1, "maxLength": 128}
TenantQuery = Annotated[
    str | None,
    Query(
        json_schema_extra=_ID_SCHEMA,
        description="the tenant (a tenant key: only its own, the default; a finance key names one)",
    ),
    ID_CHECK,
]
Ident = Annotated[str, Field(json_schema_extra=_ID_SCHEMA), ID_CHECK]
IdQuery = Annotated[str | None, Query(json_schema_extra=_ID_SCHEMA), ID_CHECK]
PeriodQuery = Annotated[
    str | None,
    Query(json_schema_extra={"pattern": _PERIOD_PATTERN}, description="a month in the tenant's time zone, YYYY-MM"),
    PERIOD_CHECK,
]
TIME_HELP = "ISO 8601 (a date, or a time without offset, is the tenant's local time) or integer ms"


def invalid(where: str, message: str) -> RequestValidationError:
    """A 422 in the app's one format: "`where`: `message`"."""
    return RequestValidationError([{"loc": ("query", where), "msg": message, "type": "value_error"}])


def parse_instant(text: str, zone: str, where: str) -> int:
    """ms since the epoch from integer ms or ISO 8601; a date or a naive time is local to `zone`."""
    value = text.strip()
    if _INTEGER.fullmatch(value):
        ms = int(value)
    else:
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                instant = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone))
            else:
                instant = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" else value)
                if instant.tzinfo is None:
                    instant = instant.replace(tzinfo=ZoneInfo(zone))
            ms = (instant - _EPOCH) // timedelta(milliseconds=1)
        except (ValueError, OverflowError, IndexError):
            raise invalid(where, "must be an ISO 8601 date or time (2026-11-01, 2026-11-01T06:00:00Z) or ms") from None
    try:
        return check_instant_ms(ms, "the time")
    except ValueError as exc:
        raise invalid(where, str(exc)) from None


def _period(text: str, zone: str) -> tuple[int, int]:
    try:
        return period_bounds(text, zone)
    except (InvoicingError, PeriodError) as exc:  # the pattern lets through only months that parse; kept as a guard
        raise invalid("period", str(exc)) from None


def window(session: Session, tenant_id: str, period: str | None, start: str | None, end: str | None) -> tuple[int, int]:
    """The tenant's month (`period`), or [from, to); exactly one of them."""
    tenant = queries.get_tenant(session, tenant_id)
    if period is not None:
        if start is not None or end is not None:
            raise invalid("period", "give either period or from and to, not both")
        return _period(period, tenant.timezone)
    if start is None or end is None:
        raise invalid("period", "give a period (YYYY-MM) or both from and to")
    lo = parse_instant(start, tenant.timezone, "from")
    hi = parse_instant(end, tenant.timezone, "to")
    if hi <= lo:
        raise invalid("to", "must be after from")
    return lo, hi


def required_tenant(who: Principal, requested: str | None) -> str:
    """The one tenant a usage or statement request is about: a tenant key's own (another: 404); for
    a finance key the one it names (an operator key: 403)."""
    tenant_id = scope_tenant(who, requested)
    if tenant_id is None:
        raise invalid("tenant", "a finance key names the tenant (tenant=...)")
    return tenant_id


@contextmanager
def read(request: Request) -> Iterator[Session]:
    with context(request).ledger.transaction() as session:
        yield session


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    # integer arithmetic: ms / 1000 as a float loses the last millisecond in year 9999
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- outputs --------------------------------------------------------------------------------------


class MeasuresOut(BaseModel):
    allocated_gpu_ms: int = Field(description="GPU time allocated (leased and metered), ms")
    busy_gpu_ms: int = Field(description="GPU time the GPU was busy, ms")
    energy_mj: int = Field(description="energy metered at the GPU, mJ (before any PUE)")
    records: int = Field(description="usage records (one-minute windows) rolled up")
    gpu_hours: str = Field(description="allocated GPU-hours, 6 places")
    busy_gpu_hours: str
    kwh: str = Field(description="energy in kWh, 6 places")
    utilization: str | None = Field(description="busy over allocated, 0..1 (4 places); null with no GPU time")

    @classmethod
    def of(cls, m: queries.Measures) -> MeasuresOut:
        return cls(
            allocated_gpu_ms=m.allocated_gpu_ms,
            busy_gpu_ms=m.busy_gpu_ms,
            energy_mj=m.energy_mj,
            records=m.records,
            gpu_hours=str(m.gpu_hours),
            busy_gpu_hours=str(m.busy_gpu_hours),
            kwh=str(m.kwh),
            utilization=None if m.utilization is None else str(m.utilization),
        )


def _periods(periods: dict[str, queries.Measures]) -> dict[str, MeasuresOut]:
    return {name: MeasuresOut.of(value) for name, value in periods.items()}


class BucketOut(MeasuresOut):
    start_ms: int
    end_ms: int
    label: str = Field(description="the local date (day) or local hour with its UTC offset (hour)")
    gpu_uuid: str | None = None
    model: str | None = None
    periods: dict[str, MeasuresOut] = Field(description="by time-of-use period (peak, valley, ...; unpriced)")


class UsageOut(BaseModel):
    tenant_id: str
    timezone: str
    start_ms: int
    end_ms: int
    start: str
    end: str
    grain: Literal["day", "hour"]
    by: Literal["gpu"] | None
    total: MeasuresOut
    periods: dict[str, MeasuresOut]
    buckets: list[BucketOut]
    as_of: str | None = Field(
        description="how fresh the figures are: the hourly rollup's last catch-up (null: never rolled up)"
    )


class GpuOut(MeasuresOut):
    gpu_uuid: str
    model: str
    periods: dict[str, MeasuresOut]


class GpuTableOut(BaseModel):
    tenant_id: str
    timezone: str
    start_ms: int
    end_ms: int
    total: MeasuresOut
    gpus: list[GpuOut]


class InvoiceOut(BaseModel):
    id: int
    number: str | None = Field(description="set once finalized (the gap-free sequence)")
    tenant_id: str
    period: str
    period_start_ms: int
    period_end_ms: int
    status: Literal["draft", "finalized", "void"]
    currency: str
    subtotal: str
    tax: str
    total: str
    credits_applied: str
    amount_due: str
    finalized_ms: int | None
    voided_ms: int | None
    payment_status: str | None = Field(description="what Stripe last reported: open, paid, failed, void; null")

    @classmethod
    def of(cls, s: queries.InvoiceSummary) -> InvoiceOut:
        return cls(
            id=s.id,
            number=s.number,
            tenant_id=s.tenant_id,
            period=s.period,
            period_start_ms=s.period_start_ms,
            period_end_ms=s.period_end_ms,
            status=s.status,  # type: ignore[arg-type]
            currency=s.currency,
            subtotal=str(s.subtotal),
            tax=str(s.tax),
            total=str(s.total),
            credits_applied=str(s.credits_applied),
            amount_due=str(s.amount_due),
            finalized_ms=s.finalized_ms,
            voided_ms=s.voided_ms,
            payment_status=s.payment_status,
        )


class InvoiceListOut(BaseModel):
    invoices: list[InvoiceOut]


class GpuUsageOut(MeasuresOut):
    gpu_uuid: str
    model: str
    plan: str


class LineUsageOut(BaseModel):
    measure: Literal["allocated_gpu_ms", "energy_mj"]
    quantity: int = Field(description="the measure's total over the hours behind the line")
    matches_quantity: bool = Field(description="quantity equals the line's quantity_base")
    total: MeasuresOut
    by_gpu: list[GpuUsageOut]


class LineOut(BaseModel):
    position: int
    kind: str
    description: str
    service_start_ms: int
    service_end_ms: int
    service_period: str
    correction: bool
    card_name: str
    card_version: int
    plan: str
    model: str
    tou_period: str
    tier: int | None
    quantity_base: int = Field(description="exact base quantity: ms of GPU time or mJ of energy")
    base_unit: str
    quantity: str
    unit: str
    unit_price: str
    amount: str
    usage: LineUsageOut | None = Field(description="the usage behind a gpu_time or energy line")


class CreditNoteOut(BaseModel):
    number: str
    currency: str
    amount: str
    reason: str
    created_ms: int


class InvoiceDetailOut(InvoiceOut):
    tenant_name: str
    tenant_timezone: str
    lines: list[LineOut]
    credit_notes: list[CreditNoteOut]


def _line(line: queries.LineDetail) -> LineOut:
    usage = None
    if line.usage is not None:
        u = line.usage
        usage = LineUsageOut(
            measure=u.measure,  # type: ignore[arg-type]
            quantity=u.quantity,
            matches_quantity=u.matches_quantity,
            total=MeasuresOut.of(u.total),
            by_gpu=[
                GpuUsageOut(gpu_uuid=g.gpu_uuid, model=g.model, plan=g.plan, **MeasuresOut.of(g.measures).model_dump())
                for g in u.by_gpu
            ],
        )
    return LineOut(position=line.position, **stored_values(line.line), usage=usage)


def invoice_out(detail: queries.InvoiceDetail) -> InvoiceDetailOut:
    return InvoiceDetailOut(
        **InvoiceOut.of(detail.invoice).model_dump(),
        tenant_name=detail.tenant_name,
        tenant_timezone=detail.tenant_timezone,
        lines=[_line(line) for line in detail.lines],
        credit_notes=[
            CreditNoteOut(
                number=n.number, currency=n.currency, amount=str(n.amount), reason=n.reason, created_ms=n.created_ms
            )
            for n in detail.credit_notes
        ],
    )


class StatementOut(BaseModel):
    tenant_id: str
    tenant_name: str
    timezone: str
    currency: str
    period: str
    start_ms: int
    end_ms: int
    total: MeasuresOut
    periods: dict[str, MeasuresOut]
    days: list[BucketOut]
    gpus: list[GpuOut]
    invoices: list[InvoiceDetailOut] = Field(description="the period's invoices (tenant keys: issued ones)")
    subtotal: str = Field(description="summed over the period's invoices that are not void")
    tax: str
    total_invoiced: str
    amount_due: str


class LeaseOut(BaseModel):
    lease_id: str
    tenant_id: str
    gpu_uuid: str
    plan: str
    start_ms: int
    end_ms: int | None
    start: str
    end: str | None

    @classmethod
    def of(cls, lease: Any) -> LeaseOut:
        return cls(
            lease_id=lease.lease_id,
            tenant_id=lease.tenant_id,
            gpu_uuid=lease.gpu_uuid,
            plan=lease.plan,
            start_ms=lease.start_ms,
            end_ms=lease.end_ms,
            start=str(iso(lease.start_ms)),
            end=iso(lease.end_ms),
        )


class LeaseListOut(BaseModel):
    leases: list[LeaseOut]


def _body_instant(value: object) -> int:
    """A time in a request body: integer ms or ISO 8601 (no offset: UTC), never a boolean or a float
    (pydantic would turn `true` into 1 ms), within `schemas.units.check_instant_ms`'s bound."""
    from billing.leases.importers import parse_time

    if isinstance(value, bool) or not isinstance(value, int | str):
        kind = {"kind": type(value).__name__}
        raise PydanticCustomError("time", "must be an ISO 8601 time (no offset: UTC) or integer ms, not a {kind}", kind)
    try:
        return check_instant_ms(parse_time(value), "the time")
    except ValueError as exc:
        raise PydanticCustomError("time", "{reason}", {"reason": str(exc)}) from None


TimeValue = Annotated[
    int,
    PlainValidator(_body_instant, json_schema_input_type=int | str),
    Field(description="ISO 8601 (no offset: UTC) or integer ms since the epoch, 1970..9999"),
]


class LeaseOpenIn(BaseModel):
    tenant_id: Ident
    gpu_uuid: Ident
    start: TimeValue
    end: TimeValue | None = None
    plan: Literal["on_demand", "valley", "interruptible", "reserved"] = "on_demand"
    lease_id: Ident | None = Field(default=None, description="default: derived from (tenant, GPU, start)")


class LeaseEndIn(BaseModel):
    end: TimeValue


# -- endpoints: usage -----------------------------------------------------------------------------


def _bucket(b: queries.UsageBucket) -> BucketOut:
    return BucketOut(
        start_ms=b.start_ms,
        end_ms=b.end_ms,
        label=b.label,
        gpu_uuid=b.gpu_uuid,
        model=b.model,
        periods=_periods(b.periods),
        **MeasuresOut.of(b.total).model_dump(),
    )


def _gpu(row: queries.GpuRow) -> GpuOut:
    return GpuOut(
        gpu_uuid=row.gpu_uuid, model=row.model, periods=_periods(row.periods), **MeasuresOut.of(row.total).model_dump()
    )


@router.get("/usage", response_model=UsageOut, responses=ERRORS, tags=["usage"])
def get_usage(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    tenant: TenantQuery = None,
    period: PeriodQuery = None,
    start: Annotated[str | None, Query(alias="from", max_length=40, description=TIME_HELP)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40, description="exclusive; as from")] = None,
    grain: Annotated[Literal["day", "hour"], Query(description="buckets: local days or hours")] = "day",
    by: Annotated[Literal["gpu"] | None, Query(description="gpu: one bucket per (day or hour, GPU)")] = None,
) -> UsageOut:
    """A tenant's usage by day or hour of its own time zone (and by GPU), split by time-of-use period:
    GPU time, busy time and energy, exact, from the hourly rollup."""
    tenant_id = required_tenant(who, tenant)
    with read(request) as session:
        lo, hi = window(session, tenant_id, period, start, end)
        limit = MAX_DAY_WINDOW_MS if grain == "day" else MAX_HOUR_WINDOW_MS
        if hi - lo > limit:
            raise invalid("to", f"a window of {grain}s spans at most {limit // MS_PER_DAY} days")
        zone = queries.get_tenant(session, tenant_id).timezone
        buckets = queries.tenant_usage(session, tenant_id, lo, hi, grain, by_gpu=by == "gpu")
        fresh = queries.as_of_ms(session, period)
    total = queries.usage_total(buckets)
    return UsageOut(
        tenant_id=tenant_id,
        timezone=zone,
        start_ms=lo,
        end_ms=hi,
        start=str(iso(lo)),
        end=str(iso(hi)),
        grain=grain,
        by=by,
        total=MeasuresOut.of(total.total),
        periods=_periods(total.periods),
        buckets=[_bucket(b) for b in buckets],
        as_of=iso(fresh),
    )


@router.get("/usage/gpus", response_model=GpuTableOut, responses=ERRORS, tags=["usage"])
def get_usage_gpus(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    tenant: TenantQuery = None,
    period: PeriodQuery = None,
    start: Annotated[str | None, Query(alias="from", max_length=40, description="as for /usage")] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40, description="exclusive; as for /usage")] = None,
) -> GpuTableOut:
    """A tenant's usage per GPU: GPU-hours, busy GPU-hours, utilization, kWh, split by time-of-use period."""
    tenant_id = required_tenant(who, tenant)
    with read(request) as session:
        lo, hi = window(session, tenant_id, period, start, end)
        if hi - lo > MAX_DAY_WINDOW_MS:
            raise invalid("to", "a window spans at most 366 days")
        zone = queries.get_tenant(session, tenant_id).timezone
        rows = queries.gpu_table(session, tenant_id, lo, hi)
    total = queries.Measures()
    for row in rows:
        total = total + row.total
    return GpuTableOut(
        tenant_id=tenant_id,
        timezone=zone,
        start_ms=lo,
        end_ms=hi,
        total=MeasuresOut.of(total),
        gpus=[_gpu(row) for row in rows],
    )


# -- endpoints: invoices and statements -----------------------------------------------------------


@router.get("/invoices", response_model=InvoiceListOut, responses=ERRORS, tags=["invoices"])
def get_invoices(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    tenant: TenantQuery = None,
    period: PeriodQuery = None,
    status: Annotated[Literal["draft", "finalized", "void"] | None, Query()] = None,
) -> InvoiceListOut:
    """Invoices, by period and tenant: a tenant key its own issued ones; a finance key any tenant's."""
    tenant_id = scope_tenant(who, tenant)
    with read(request) as session:
        found = queries.tenant_invoices(
            session, tenant_id, period=period, status=status, include_drafts=not who.is_tenant
        )
    return InvoiceListOut(invoices=[InvoiceOut.of(s) for s in found])


InvoiceRef = Annotated[str, Path(min_length=1, max_length=64, description="the invoice's number or id")]


@router.get("/invoices/{number}", response_model=InvoiceDetailOut, responses=ERRORS, tags=["invoices"])
def get_invoice(
    request: Request, who: Annotated[Principal, Depends(principal)], number: InvoiceRef
) -> InvoiceDetailOut:
    """One invoice by number (or id): header, lines, the usage behind each usage line, credit notes."""
    require_tenant_data(who)  # before the look-up: an operator key's 403 says nothing of what exists
    with read(request) as session:
        detail = queries.invoice_detail(
            session, number, owner_check=lambda owner: check_owner(who, owner), include_drafts=not who.is_tenant
        )
    return invoice_out(detail)


TenantPath = Annotated[str, Path(json_schema_extra=_ID_SCHEMA), ID_CHECK]
PeriodPath = Annotated[str, Path(json_schema_extra={"pattern": _PERIOD_PATTERN}, description="YYYY-MM"), PERIOD_CHECK]


class CsvResponse(Response):
    media_type = "text/csv; charset=utf-8"


class PdfResponse(Response):
    media_type = "application/pdf"


def _statement(request: Request, who: Principal, tenant: str, period: str) -> Any:
    """B's `billing.statements.statement.Statement` of a tenant's month (one builder for JSON, CSV, PDF and the
    portal), for the tenant this key may read (another tenant's: 404, as an unknown one)."""
    from billing.statements import statement as statements

    tenant_id = required_tenant(who, tenant)
    with read(request) as session:
        try:
            return statements.build_statement(session, tenant_id, period, include_drafts=not who.is_tenant)
        except (InvoicingError, PeriodError) as exc:  # a month that reaches outside 1970..9999 in the tenant's zone
            raise invalid("period", str(exc)) from None


def _download(body: str | bytes, statement: Any, form: str, response_class: type[Response]) -> Response:
    from billing.statements import statement as statements

    filename = f"{statements.file_stem(statement)}.{form}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"}
    return response_class(body, headers=headers)


def _file_responses(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a download: the file, and the API's JSON errors (said explicitly, or
    FastAPI would document the errors in the file's media type)."""
    schema = {"type": "string", "format": "binary"} if media_type == "application/pdf" else {"type": "string"}
    out: dict[int | str, dict[str, Any]] = {
        200: {"description": description, "content": {media_type: {"schema": schema}}}
    }
    for status, entry in ERRORS.items():
        out[status] = {
            "description": entry["description"],
            "content": {"application/json": {"schema": ErrorOut.model_json_schema()}},
        }
    return out


@router.get(
    "/statements/{tenant}/{period}.csv",
    response_class=CsvResponse,
    tags=["statements"],
    responses=_file_responses("text/csv", "the statement as sectioned CSV"),
)
def get_statement_csv(
    request: Request, who: Annotated[Principal, Depends(principal)], tenant: TenantPath, period: PeriodPath
) -> Response:
    """A tenant's statement for a month as CSV (sections: statement, usage, days, GPUs, invoices, lines;
    exact ms and mJ, plain-decimal money): the same figures as the JSON and the PDF."""
    from billing.statements import statement as statements

    statement = _statement(request, who, tenant, period)
    return _download(statements.render_csv(statement), statement, "csv", CsvResponse)


@router.get(
    "/statements/{tenant}/{period}.pdf",
    response_class=PdfResponse,
    tags=["statements"],
    responses=_file_responses("application/pdf", "the statement as PDF"),
)
def get_statement_pdf(
    request: Request, who: Annotated[Principal, Depends(principal)], tenant: TenantPath, period: PeriodPath
) -> Response:
    """A tenant's statement for a month as PDF, with its charts (WeasyPrint)."""
    from billing.statements import statement as statements

    statement = _statement(request, who, tenant, period)
    return _download(statements.render_pdf(statement), statement, "pdf", PdfResponse)


@router.get("/statements/{tenant}/{period}", response_model=StatementOut, responses=ERRORS, tags=["statements"])
def get_statement(
    request: Request, who: Annotated[Principal, Depends(principal)], tenant: TenantPath, period: PeriodPath
) -> StatementOut:
    """A tenant's statement for a month as JSON: usage by day and per GPU, the period's invoices (a tenant
    key: issued ones) with the usage behind their lines; the same figures as the CSV and the PDF."""
    st = _statement(request, who, tenant, period)
    usage = st.usage
    return StatementOut(
        tenant_id=st.tenant_id,
        tenant_name=st.tenant_name,
        timezone=st.timezone,
        currency=st.currency,
        period=st.period,
        start_ms=st.start_ms,
        end_ms=st.end_ms,
        total=MeasuresOut.of(usage.total),
        periods=_periods(usage.periods),
        days=[_bucket(b) for b in st.days],
        gpus=[_gpu(g) for g in st.gpus],
        invoices=[invoice_out(d) for d in st.invoices],
        subtotal=str(st.invoiced("subtotal")),
        tax=str(st.invoiced("tax")),
        total_invoiced=str(st.invoiced("total")),
        amount_due=str(st.invoiced("amount_due")),
    )


# -- endpoints: leases ----------------------------------------------------------------------------


def _lease_error(exc: LedgerError | PeriodError) -> JSONResponse:
    if isinstance(exc, UnknownTenant | UnknownLease):
        return error_response(404, str(exc))
    if isinstance(exc, Conflict):
        return error_response(409, str(exc))
    if isinstance(exc, InvalidLease):
        return error_response(422, str(exc))
    return error_response(400, str(exc))


LEASE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorOut, "description": "the ledger refused the change (the message says why)"},
    409: {"model": ErrorOut, "description": "it overlaps another lease, or the id is taken with other fields"},
}


@router.get("/leases", response_model=LeaseListOut, responses=ERRORS, tags=["leases"])
def get_leases(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    tenant: IdQuery = None,
    gpu: IdQuery = None,
    active_at: Annotated[str | None, Query(max_length=40, description="ISO 8601 (no offset: UTC) or ms")] = None,
) -> LeaseListOut:
    """Leases by GPU and start (operator and finance keys): optionally one tenant's, one GPU's, or those
    covering an instant."""
    tenant_id = scope_leases(who, tenant)
    at = parse_instant(active_at, "UTC", "active_at") if active_at is not None else None
    with read(request) as session:
        found = leases.list_leases(session, tenant_id, gpu, at)
    return LeaseListOut(leases=[LeaseOut.of(lease) for lease in found])


@router.post("/leases", response_model=LeaseOut, status_code=201, responses=LEASE_ERRORS, tags=["leases"])
def post_lease(
    request: Request, who: Annotated[Principal, Depends(principal)], body: Annotated[LeaseOpenIn, Body()]
) -> LeaseOut | Response:
    """Open a lease (operator keys). Opening the same lease again changes nothing."""
    require_role(who, *LEASE_WRITE_ROLES)
    start, end = body.start, body.end
    try:
        with context(request).ledger.transaction() as session:
            lease = leases.open_lease(
                session, body.tenant_id, body.gpu_uuid, start, end, body.plan, body.lease_id, actor=f"api:{who.key_id}"
            )
    except (LedgerError, PeriodError) as exc:
        return _lease_error(exc)
    return LeaseOut.of(lease)


@router.post("/leases/{lease_id}/end", response_model=LeaseOut, responses=LEASE_ERRORS, tags=["leases"])
def post_lease_end(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    lease_id: Annotated[str, Path(json_schema_extra=_ID_SCHEMA), ID_CHECK],
    body: Annotated[LeaseEndIn, Body()],
) -> LeaseOut | Response:
    """End an open lease (operator keys). Ending it again at the same instant changes nothing."""
    require_role(who, *LEASE_WRITE_ROLES)
    end = body.end
    try:
        with context(request).ledger.transaction() as session:
            lease = leases.end_lease(session, lease_id, end, actor=f"api:{who.key_id}")
    except (LedgerError, PeriodError) as exc:
        return _lease_error(exc)
    return LeaseOut.of(lease)
