"""A tenant's statement for a period: what it used (by day, peak against valley, per GPU) and what it was
charged (the period's invoices, each line with the usage behind it), as HTML (with the SVG charts), PDF
(WeasyPrint, from the same HTML) and CSV.

Read from the read model (`billing.readmodel.queries`: the hourly rollup and the ledger), never the minute
Parquet. Usage is in the tenant's time zone: the period is its local calendar month.

The CSV is one file of sections, every row's first cell naming its section (`statement`, `usage_total`,
`usage_day`, `usage_gpu`, `invoice`, `invoice_line`, `totals`); each section starts with a header row
whose first cell is `section`, and ends with an empty row. Quantities are exact: GPU time in ms,
energy in mJ (integers, as metered), beside GPU-hours and kWh to 6 places; money is a plain decimal
in the currency's minor unit ("4.82", "1200"), never a float and never localized. `parse_csv` reads
it back.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import cached_property
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_skeleton
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.orm import Session

from billing.ledger.db import now_ms
from billing.ledger.models import INVOICE_VOID
from billing.readmodel.queries import (
    GpuRow,
    InvoiceDetail,
    Measures,
    UsageBucket,
    get_tenant,
    gpu_table,
    invoice_detail,
    period_window,
    tenant_invoices,
    tenant_usage,
    usage_total,
)
from billing.statements import charts, formatting
from schemas.csv_cells import csv_cell
from schemas.units import ms_to_datetime

TEMPLATES = Path(__file__).parents[1] / "web" / "portal" / "templates"
ASSETS = Path(__file__).parents[1] / "web" / "portal" / "static"  # the only files a statement PDF may load
FORMATS = ("html", "pdf", "csv")
PERIOD_LABELS = {"peak": "Peak", "valley": "Valley", "unpriced": "Outside contract"}


def period_label(name: str) -> str:
    return PERIOD_LABELS.get(name, name.replace("_", " ").capitalize())


# -- locale ---------------------------------------------------------------------------------------


def negotiate_locale(accept_language: str | None, default: str = formatting.DEFAULT_LOCALE) -> str:
    """The first locale of an Accept-Language header that Babel knows ("fr-CH,fr;q=0.9" -> "fr_CH"),
    by quality; `default` when none is given or none is known."""
    if not accept_language:
        return default
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept_language.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            weighted.append((-quality, index, tag.strip()))
    for _, _, tag in sorted(weighted):
        try:
            parsed = str(Locale.parse(tag.replace("-", "_")))
        except (UnknownLocaleError, ValueError, TypeError):
            continue
        if parsed != "root":
            return parsed
    return default


@dataclass(frozen=True)
class Formatter:
    """Numbers, money, units and dates of one tenant for one locale (Babel)."""

    locale: str
    currency: str
    timezone: str

    def money(self, amount: Decimal) -> str:
        return formatting.money(amount, self.currency, self.locale)

    def price(self, value: Decimal) -> str:
        """A unit price with every decimal it has (0.105 stays 0.105), at least the currency's."""
        return str(format_currency(value, self.currency, locale=self.locale, decimal_quantization=False))

    def number(self, value: Decimal | int, places: int = 2) -> str:
        pattern = "#,##0." + "0" * places if places else "#,##0"
        return str(format_decimal(value, format=pattern, locale=self.locale))

    def gpu_h(self, value: Decimal) -> str:
        return formatting.quantity(value, "GPU-h", self.locale, 2)

    def kwh(self, value: Decimal) -> str:
        return formatting.quantity(value, "kWh", self.locale, 2)

    def exact(self, value: Decimal, unit: str = "") -> str:
        """A quantity to its 6 places (an invoice line's), in the locale's digits."""
        text = self.number(value, 6)
        return f"{text} {unit}".rstrip()

    def percent(self, value: Decimal | None) -> str:
        return "–" if value is None else str(format_percent(value, format="#,##0.0%", locale=self.locale))

    def local(self, ts_ms: int) -> datetime:
        from zoneinfo import ZoneInfo

        return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).astimezone(ZoneInfo(self.timezone))

    def date(self, value: dt.date | int, form: str = "medium") -> str:
        day = self.local(value).date() if isinstance(value, int) else value
        return str(format_date(day, format=form, locale=self.locale))

    def datetime(self, ts_ms: int, form: str = "medium") -> str:
        return str(format_datetime(self.local(ts_ms), format=form, tzinfo=self.local(ts_ms).tzinfo, locale=self.locale))

    def month(self, period: str) -> str:
        """ "November 2026", "2026年11月", "ноябрь 2026 г.": the locale's own month-and-year pattern.

        (Not the pattern "LLLL y": Babel 2.18 resolves stand-alone month names through a shared alias,
        so after a ja_JP page every locale loaded later would name its months in Japanese.)"""
        year, month = (int(p) for p in period.split("-"))
        return str(format_skeleton("yMMMM", date(year, month, 1), locale=self.locale))


# -- the statement --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    tenant_id: str
    tenant_name: str
    currency: str
    timezone: str
    period: str
    start_ms: int
    end_ms: int
    days: list[UsageBucket]
    gpus: list[GpuRow]
    invoices: list[InvoiceDetail]
    generated_ms: int
    periods: list[str] = field(default_factory=list)  # the time-of-use periods with usage, valley first

    @cached_property
    def usage(self) -> UsageBucket:
        """The period's usage, summed over its days (and split by time-of-use period)."""
        return usage_total(self.days)

    @property
    def counted(self) -> list[InvoiceDetail]:
        """The invoices that count in the totals: every one but the voided."""
        return [d for d in self.invoices if d.invoice.status != INVOICE_VOID]

    def invoiced(self, name: str) -> Decimal:
        """subtotal, tax, total, credits_applied or amount_due, summed over the counted invoices."""
        return sum((getattr(d.invoice, name) for d in self.counted), Decimal(0))

    @property
    def usage_lines_gpu_ms(self) -> int:
        """GPU time priced by the counted invoices' own usage lines (corrections of other periods aside)."""
        return sum(
            line.quantity_base
            for d in self.counted
            for line in d.lines
            if line.kind == "gpu_time" and not line.correction and line.service_period == self.period
        )

    @property
    def usage_lines_energy_mj(self) -> int:
        return sum(
            line.quantity_base
            for d in self.counted
            for line in d.lines
            if line.kind == "energy" and not line.correction and line.service_period == self.period
        )


def build_statement(session: Session, tenant_id: str, period: str, *, include_drafts: bool = True) -> Statement:
    """A tenant's statement of `period` (its local month). The caller has scoped `tenant_id`
    (`billing.web.auth.scope_tenant`); `include_drafts=False` for a tenant key (a draft still changes)."""
    tenant = get_tenant(session, tenant_id)
    start_ms, end_ms = period_window(session, tenant_id, period)
    days = tenant_usage(session, tenant_id, start_ms, end_ms, "day")
    gpus = gpu_table(session, tenant_id, start_ms, end_ms)
    summaries = tenant_invoices(session, tenant_id, period=period, include_drafts=include_drafts)
    details = [invoice_detail(session, s.id) for s in summaries]
    names = charts.order_series({name for day in days for name in day.periods})
    return Statement(
        tenant_id=tenant.tenant_id,
        tenant_name=tenant.name,
        currency=tenant.currency,
        timezone=tenant.timezone,
        period=period,
        start_ms=start_ms,
        end_ms=end_ms,
        days=days,
        gpus=gpus,
        invoices=details,
        generated_ms=now_ms(),
        periods=names,
    )


# -- charts ---------------------------------------------------------------------------------------


def day_bars(
    days: Sequence[UsageBucket], measure: Callable[[Measures], Decimal], href: Callable[[str], str] | None = None
) -> list[charts.Bar]:
    """One bar per day: `measure` of each time-of-use period (day labels are the bucket's local date)."""
    bars = []
    for bucket in days:
        day = date.fromisoformat(bucket.label[:10])
        values = {name: measure(value) for name, value in bucket.periods.items()}
        bars.append(charts.Bar(str(day.day), bucket.label, values, href(bucket.label) if href else None))
    return bars


def hour_bars(hours: Sequence[UsageBucket], measure: Callable[[Measures], Decimal]) -> list[charts.Bar]:
    """One bar per local hour (labels "01:00", with the UTC offset in the key: a DST day repeats an hour)."""
    return [
        charts.Bar(bucket.label[11:13], bucket.label, {name: measure(v) for name, v in bucket.periods.items()})
        for bucket in hours
    ]


@dataclass(frozen=True)
class ChartPair:
    """The two charts of a usage view (GPU-hours and kWh per bucket) with their tables."""

    gpu_svg: Markup
    gpu_table: Markup
    energy_svg: Markup
    energy_table: Markup


def usage_charts(
    buckets: Sequence[UsageBucket],
    fmt: Formatter,
    *,
    grain: str = "day",
    href: Callable[[str], str] | None = None,
    prefix: str = "chart",
    width: int = 460,
    height: int = 260,
) -> ChartPair:
    labels = {name: period_label(name) for bucket in buckets for name in bucket.periods}
    if grain == "day":
        gpu_bars = day_bars(buckets, lambda m: m.gpu_hours, href)
        energy_bars = day_bars(buckets, lambda m: m.kwh, href)
        key_header = "Day"
    else:
        gpu_bars = hour_bars(buckets, lambda m: m.gpu_hours)
        energy_bars = hour_bars(buckets, lambda m: m.kwh)
        key_header = "Hour"
    per = "day" if grain == "day" else "hour"
    total = usage_total(buckets)
    gpu_totals = charts.Totals({n: m.gpu_hours for n, m in total.periods.items()}, total.total.gpu_hours)
    energy_totals = charts.Totals({n: m.kwh for n, m in total.periods.items()}, total.total.kwh)
    return ChartPair(
        gpu_svg=charts.stacked_bars(
            gpu_bars,
            chart_id=f"{prefix}-gpu-hours",
            title=f"GPU-hours per {per}",
            unit="GPU-hours",
            fmt=fmt.gpu_h,
            series_labels=labels,
            width=width,
            height=height,
            totals=gpu_totals,
        ),
        gpu_table=charts.data_table(
            gpu_bars,
            caption=f"GPU-hours per {per}",
            fmt=fmt.gpu_h,
            series_labels=labels,
            key_header=key_header,
            totals=gpu_totals,
        ),
        energy_svg=charts.stacked_bars(
            energy_bars,
            chart_id=f"{prefix}-energy",
            title=f"Energy per {per} (kWh)",
            unit="kWh",
            fmt=fmt.kwh,
            series_labels=labels,
            width=width,
            height=height,
            totals=energy_totals,
        ),
        energy_table=charts.data_table(
            energy_bars,
            caption=f"Energy per {per} (kWh, metered)",
            fmt=fmt.kwh,
            series_labels=labels,
            key_header=key_header,
            totals=energy_totals,
        ),
    )


# -- rendering ------------------------------------------------------------------------------------


def template_environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    env.globals["period_label"] = period_label
    return env


_ENV: Environment | None = None


def environment() -> Environment:
    global _ENV
    if _ENV is None:
        _ENV = template_environment()
    return _ENV


def render_html(
    statement: Statement, locale: str = formatting.DEFAULT_LOCALE, *, for_pdf: bool = False, nonce: str | None = None
) -> str:
    """The statement as one self-contained HTML page (inline CSS and SVG charts). `nonce`: the CSP nonce
    of its one `<style>` element, when the page is served (its policy allows that style and nothing else)."""
    fmt = Formatter(locale, statement.currency, statement.timezone)
    pair = usage_charts(statement.days, fmt, prefix="statement", width=720, height=250)
    return (
        environment()
        .get_template("statement.html")
        .render(s=statement, fmt=fmt, charts=pair, for_pdf=for_pdf, lang=locale.split("_")[0], nonce=nonce)
    )


def asset_fetcher() -> object:
    """WeasyPrint's url_fetcher for statements: `data:` URIs and files under the portal's static folder
    (`ASSETS`), and nothing else: no http(s), ftp or other file, so an escaping slip in a template could
    never become a server-side request or a local file read. A refused URL is skipped (WeasyPrint logs a
    warning) and the PDF is rendered without it."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    from weasyprint.urls import URLFetcher

    root = ASSETS.resolve()

    class AssetFetcher(URLFetcher):  # type: ignore[misc]  # WeasyPrint has no type hints
        def fetch(self, url: str, headers: object = None) -> object:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme == "data":
                return super().fetch(url, headers)
            if scheme == "file" and parts.netloc in ("", "localhost"):
                path = Path(url2pathname(parts.path)).resolve()
                if path.is_relative_to(root) and path.is_file():
                    return super().fetch(path.as_uri(), headers)
            raise ValueError(f"a statement loads only wattmeter's own assets, not {url[:100]!r}")

    return AssetFetcher(timeout=5, allow_redirects=False)


def html_to_pdf(html: str) -> bytes:
    """A statement's HTML as PDF, every resource it names fetched through `asset_fetcher` only."""
    from weasyprint import HTML

    pdf: bytes = HTML(string=html, base_url=ASSETS.as_uri() + "/", url_fetcher=asset_fetcher()).write_pdf()
    return pdf


def render_pdf(statement: Statement, locale: str = formatting.DEFAULT_LOCALE) -> bytes:
    """The statement as PDF (WeasyPrint, from the statement's HTML: the same charts and tables)."""
    return html_to_pdf(render_html(statement, locale, for_pdf=True))


def _ms_iso(ts_ms: int) -> str:
    return ms_to_datetime(ts_ms).isoformat().replace("+00:00", "Z")


def _measure_cells(m: Measures) -> list[object]:
    return [m.allocated_gpu_ms, m.busy_gpu_ms, m.energy_mj, m.records, m.gpu_hours, m.busy_gpu_hours, m.kwh]


MEASURE_HEADER = ["gpu_ms", "busy_gpu_ms", "energy_mj", "records", "gpu_hours", "busy_gpu_hours", "kwh"]


def render_csv(statement: Statement) -> str:
    """The statement as sectioned CSV (see the module docstring); exact quantities and plain-decimal money."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    s = statement
    names = s.periods

    def section(name: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        w.writerow(["section", *header])
        for row in rows:
            w.writerow([name, *(csv_cell("" if v is None else str(v)) for v in row)])
        w.writerow([])

    section(
        "statement",
        ["field", "value"],
        [
            ("tenant_id", s.tenant_id),
            ("tenant_name", s.tenant_name),
            ("period", s.period),
            ("timezone", s.timezone),
            ("currency", s.currency),
            ("start", _ms_iso(s.start_ms)),
            ("end", _ms_iso(s.end_ms)),
            ("start_ms", s.start_ms),
            ("end_ms", s.end_ms),
            ("generated_at", _ms_iso(s.generated_ms)),
        ],
    )
    total = s.usage
    section(
        "usage_total",
        ["tou_period", *MEASURE_HEADER],
        [*((name, *_measure_cells(total.period(name))) for name in names), ("all", *_measure_cells(total.total))],
    )
    per_period = [f"{col}_{name}" for name in names for col in ("gpu_ms", "energy_mj")]
    section(
        "usage_day",
        ["date", "start_ms", "end_ms", *MEASURE_HEADER, *per_period],
        [
            (
                d.label,
                d.start_ms,
                d.end_ms,
                *_measure_cells(d.total),
                *(v for name in names for v in (d.period(name).allocated_gpu_ms, d.period(name).energy_mj)),
            )
            for d in s.days
        ],
    )
    section(
        "usage_gpu",
        ["gpu_uuid", "model", *MEASURE_HEADER, "utilization", *per_period],
        [
            (
                g.gpu_uuid,
                g.model,
                *_measure_cells(g.total),
                g.utilization,
                *(v for name in names for v in (g.period(name).allocated_gpu_ms, g.period(name).energy_mj)),
            )
            for g in s.gpus
        ],
    )
    money = ["subtotal", "tax", "total", "credits_applied", "amount_due"]
    section(
        "invoice",
        ["invoice", "status", "period", "currency", *money, "payment_status", "finalized_at"],
        [
            (
                d.invoice.reference,
                d.invoice.status,
                d.invoice.period,
                d.invoice.currency,
                *(getattr(d.invoice, m) for m in money),
                d.invoice.payment_status,
                _ms_iso(d.invoice.finalized_ms) if d.invoice.finalized_ms else None,
            )
            for d in s.invoices
        ],
    )
    section(
        "invoice_line",
        [
            "invoice",
            "position",
            "kind",
            "description",
            "service_period",
            "correction",
            "plan",
            "model",
            "tou_period",
            "tier",
            "quantity_base",
            "base_unit",
            "quantity",
            "unit",
            "unit_price",
            "amount",
            "usage_measure",
            "usage_quantity",
            "usage_matches",
        ],
        [
            (
                d.invoice.reference,
                line.position,
                line.kind,
                line.description,
                line.service_period,
                str(line.correction).lower(),
                line.plan,
                line.model,
                line.tou_period,
                line.tier,
                line.quantity_base,
                line.base_unit,
                line.quantity,
                line.unit,
                line.unit_price,
                line.amount,
                line.usage.measure if line.usage else None,
                line.usage.quantity if line.usage else None,
                str(line.usage.matches_quantity).lower() if line.usage else None,
            )
            for d in s.invoices
            for line in d.lines
        ],
    )
    section(
        "totals",
        ["field", "value"],
        [
            ("currency", s.currency),
            *((m, s.invoiced(m)) for m in money),
            ("invoices_counted", len(s.counted)),
            ("gpu_ms", total.total.allocated_gpu_ms),
            ("energy_mj", total.total.energy_mj),
            ("gpu_hours", total.total.gpu_hours),
            ("kwh", total.total.kwh),
        ],
    )
    return out.getvalue()


def parse_csv(text: str) -> dict[str, list[dict[str, str]]]:
    """A statement CSV back as {section: [row as dict]}."""
    sections: dict[str, list[dict[str, str]]] = {}
    header: list[str] = []
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if row[0] == "section":
            header = row[1:]
            continue
        sections.setdefault(row[0], []).append(dict(zip(header, row[1:])))
    return sections


def file_stem(statement: Statement) -> str:
    """statement-<tenant>-<period>, both reduced to characters safe in a file name and a header (the
    callers validate the period; this never lets a newline or a quote through regardless)."""
    tenant = re.sub(r"[^A-Za-z0-9_.-]+", "_", statement.tenant_id).strip("._") or "tenant"
    period = re.sub(r"[^0-9-]+", "_", statement.period)[:16] or "period"
    return f"statement-{tenant}-{period}"


def write_statement(
    statement: Statement, out_dir: Path, formats: Sequence[str] = FORMATS, locale: str = formatting.DEFAULT_LOCALE
) -> list[Path]:
    """Write the statement as `statement-<tenant>-<period>.<format>` files into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for form in formats:
        path = out_dir / f"{file_stem(statement)}.{form}"
        tmp = path.with_name(path.name + ".tmp")
        if form == "html":
            tmp.write_text(render_html(statement, locale), encoding="utf-8")
        elif form == "pdf":
            tmp.write_bytes(render_pdf(statement, locale))
        elif form == "csv":
            tmp.write_text(render_csv(statement), encoding="utf-8", newline="")
        else:
            raise ValueError(f"unknown statement format {form!r}: choose from {', '.join(FORMATS)}")
        tmp.replace(path)
        written.append(path)
    return written
