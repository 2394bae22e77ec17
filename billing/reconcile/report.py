"""A reconciliation as text (stdout), CSV (one row per tenant x cause), a self-contained HTML page
and JSON (everything, money as strings). Formatting only: every number comes from `waterfall`."""

from __future__ import annotations

import csv
import html
import io
from fractions import Fraction
from pathlib import Path
from typing import Any

from billing.common.instants import ms_to_iso
from billing.pricing.money import minor_units, round_half_even
from billing.reconcile.waterfall import (
    LEG_COLLECTED,
    LEG_MONEY,
    LEG_QUANTITY,
    ROLE_ANCHOR,
    Item,
    Reconciliation,
    TenantResult,
    fraction_text,
    gpu_hours_text,
)
from schemas.csv_cells import csv_cell

CSV_COLUMNS = ("period", "tenant", "invoice", "leg", "cause", "amount", "currency", "quantity", "detail", "explained")
LEGS = (LEG_QUANTITY, LEG_MONEY, LEG_COLLECTED)


def amount_text(value: Fraction | None, currency: str) -> str:
    """Exact decimal text with at least the currency's places, or 12 places when the exact value has
    no finite decimal form (JSON keeps the exact n/d beside it)."""
    if value is None:
        return ""
    places = minor_units(currency)
    rounded = round_half_even(value, places)
    return format(rounded, "f") if Fraction(rounded) == value else fraction_text(value)


def display_amount(value: Fraction | None, currency: str) -> str:
    """For people: exact up to 4 places past the minor unit, else rounded to them and marked ~."""
    if value is None:
        return ""
    places = minor_units(currency) + 4
    rounded = round_half_even(value, places)
    if Fraction(rounded) == value:
        short = round_half_even(value, minor_units(currency))
        return format(short if Fraction(short) == value else rounded.normalize(), "f")
    return "~" + format(rounded, "f")


def _quantity(item: Item) -> str:
    return "" if item.quantity_ms is None else gpu_hours_text(item.quantity_ms)


def _detail(item: Item) -> str:
    return item.message or item.detail if not item.explained else item.detail


def _cutoff_text(result: Reconciliation) -> str:
    return ", ".join(f"p{p}<{o}" for p, o in sorted(result.cutoff.items())) or "no sink manifests"


# -- CSV ---------------------------------------------------------------------------------------


def rows(result: Reconciliation) -> list[dict[str, str]]:
    """One row per tenant x cause or step, then the totals per currency (tenant '*')."""
    out = []
    for tenant in result.tenants:
        for item in tenant.items:
            out.append(
                {
                    "period": result.period,
                    "tenant": tenant.tenant_id,
                    "invoice": tenant.invoice,
                    "leg": item.leg,
                    "cause": item.cause,
                    "amount": amount_text(item.amount, tenant.currency),
                    "currency": tenant.currency if item.amount is not None else "",
                    "quantity": _quantity(item),
                    "detail": _detail(item),
                    "explained": "true" if item.explained else "false",
                }
            )
        for flag in tenant.flags:
            out.append(
                {
                    "period": result.period,
                    "tenant": tenant.tenant_id,
                    "invoice": tenant.invoice,
                    "leg": "flag",
                    "cause": "flagged",
                    "amount": "",
                    "currency": "",
                    "quantity": "",
                    "detail": flag,
                    "explained": "true",
                }
            )
    for currency, totals in result.totals.items():
        for cause, value in (
            ("metered", totals.metered),
            ("invoiced", Fraction(totals.invoiced)),
            ("collected", Fraction(totals.collected)),
        ):
            out.append(
                {
                    "period": result.period,
                    "tenant": "*",
                    "invoice": "",
                    "leg": "total",
                    "cause": cause,
                    "amount": amount_text(value, currency),
                    "currency": currency,
                    "quantity": "",
                    "detail": f"{totals.tenants} tenant(s)",
                    "explained": "true",
                }
            )
    for note in result.notes:
        out.append(
            {
                "period": result.period,
                "tenant": "*",
                "invoice": "",
                "leg": "flag",
                "cause": "flagged",
                "amount": "",
                "currency": "",
                "quantity": "",
                "detail": note,
                "explained": "true",
            }
        )
    return out


def csv_text(result: Reconciliation) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: csv_cell(value) for column, value in row.items()} for row in rows(result))
    return buffer.getvalue()


def write_csv(result: Reconciliation, path: Path | str) -> Path:
    target = Path(path)
    target.write_text(csv_text(result), encoding="utf-8")
    return target


# -- JSON --------------------------------------------------------------------------------------


def _item_json(item: Item, currency: str) -> dict[str, Any]:
    return {
        "leg": item.leg,
        "cause": item.cause,
        "role": item.role,
        "amount": amount_text(item.amount, currency) or None,
        "exact": None if item.amount is None else f"{item.amount.numerator}/{item.amount.denominator}",
        "quantity_ms": item.quantity_ms,
        "gpu_hours": _quantity(item) or None,
        "detail": item.detail,
        "explained": item.explained,
        "message": item.message or None,
    }


def _tenant_json(tenant: TenantResult) -> dict[str, Any]:
    return {
        "tenant_id": tenant.tenant_id,
        "currency": tenant.currency,
        "invoice": tenant.invoice or None,
        "status": tenant.status,
        "metered": amount_text(tenant.metered, tenant.currency) or None,
        "invoiced": None if tenant.invoiced is None else str(tenant.invoiced),
        "collected": None if tenant.collected is None else str(tenant.collected),
        "flags": tenant.flags,
        "unexplained": tenant.unexplained,
        "items": [_item_json(i, tenant.currency) for i in tenant.items],
    }


def to_json(result: Reconciliation) -> dict[str, Any]:
    return {
        "period": result.period,
        "cutoff": {str(p): o for p, o in sorted(result.cutoff.items())},
        "now": ms_to_iso(result.now_ms),
        "explained": result.ok,
        "unexplained": result.unexplained,
        "flags": result.flags,
        "totals": {
            c: {
                "metered": amount_text(t.metered, c),
                "invoiced": amount_text(Fraction(t.invoiced), c),
                "collected": amount_text(Fraction(t.collected), c),
                "tenants": t.tenants,
            }
            for c, t in result.totals.items()
        },
        "tenants": [_tenant_json(tenant) for tenant in result.tenants],
    }


# -- text --------------------------------------------------------------------------------------


def _item_text(item: Item, currency: str) -> str:
    mark = "" if item.role == ROLE_ANCHOR else ("  " if item.explained else "! ")
    if item.amount is not None:
        value = f"{display_amount(item.amount, currency):>18}"
    elif item.quantity_ms is not None:
        value = f"{gpu_hours_text(item.quantity_ms) + ' GPU-h':>18}"
    else:
        value = " " * 18
    cause = f"{mark}{item.cause}" if mark else item.cause
    return f"  {item.leg:<9} {cause:<34} {value}  {_detail(item)}"


def text(result: Reconciliation) -> str:
    out = [
        f"wattmeter reconciliation {result.period}  (Parquet cut-off {_cutoff_text(result)}; "
        f"leases clipped to {ms_to_iso(result.now_ms)})"
    ]
    for tenant in result.tenants:
        out.append("")
        invoice = f"invoice {tenant.invoice} ({tenant.status})" if tenant.invoice else "no invoice"
        out.append(f"{tenant.tenant_id}  {tenant.currency}  {invoice}")
        for leg in LEGS:
            out += [_item_text(item, tenant.currency) for item in tenant.items if item.leg == leg]
    out.append("")
    out.append("totals")
    for currency, totals in result.totals.items():
        out.append(
            f"  {currency}  metered {display_amount(totals.metered, currency)}  invoiced "
            f"{amount_text(Fraction(totals.invoiced), currency)}  collected "
            f"{amount_text(Fraction(totals.collected), currency)}  ({totals.tenants} tenant(s))"
        )
    if not result.totals:
        out.append("  nothing metered, leased or invoiced in the period")
    if result.flags:
        out.append("")
        out.append("flagged (not reconciled, not unexplained):")
        out += [f"  {flag}" for flag in result.flags]
    out.append("")
    if result.unexplained:
        out += [f"unexplained: {line}" for line in result.unexplained]
        out.append(f"{len(result.unexplained)} unexplained difference(s)")
    else:
        out.append("every difference has a named cause")
    return "\n".join(out)


# -- HTML --------------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.anchor td { font-weight: 600; background: #f4f6f8; }
tr.unexplained td { background: #fde8e8; color: #8a1111; }
p.flag, li.flag { color: #7a5200; }
.ok { color: #176317; font-weight: 600; } .bad { color: #8a1111; font-weight: 600; }
"""


def _cell(value: str, numeric: bool = False) -> str:
    return f'<td class="num">{html.escape(value)}</td>' if numeric else f"<td>{html.escape(value)}</td>"


def html_text(result: Reconciliation) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>wattmeter reconciliation {e(result.period)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Reconciliation {e(result.period)}: metered, invoiced, collected</h1>",
        f"<p>Parquet cut-off {e(_cutoff_text(result))}; leases clipped to {e(ms_to_iso(result.now_ms))}.</p>",
    ]
    if result.unexplained:
        parts.append(f'<p class="bad">{len(result.unexplained)} unexplained difference(s)</p><ul>')
        parts += [f'<li class="bad">{e(line)}</li>' for line in result.unexplained]
        parts.append("</ul>")
    else:
        parts.append('<p class="ok">Every difference has a named cause.</p>')
    parts.append(
        "<h2>Totals</h2><table><tr><th>currency</th><th>metered</th><th>invoiced</th><th>collected</th>"
        "<th>tenants</th></tr>"
    )
    for currency, totals in result.totals.items():
        parts.append(
            "<tr>"
            + _cell(currency)
            + _cell(display_amount(totals.metered, currency), True)
            + _cell(amount_text(Fraction(totals.invoiced), currency), True)
            + _cell(amount_text(Fraction(totals.collected), currency), True)
            + _cell(str(totals.tenants), True)
            + "</tr>"
        )
    parts.append("</table>")
    if result.notes:
        parts += [f'<p class="flag">{e(note)}</p>' for note in result.notes]
    for tenant in result.tenants:
        invoice = f"invoice {tenant.invoice} ({tenant.status})" if tenant.invoice else "no invoice"
        parts.append(f"<h2>{e(tenant.tenant_id)} &middot; {e(tenant.currency)} &middot; {e(invoice)}</h2>")
        parts.append("<table><tr><th>leg</th><th>cause</th><th>amount</th><th>GPU-h</th><th>detail</th></tr>")
        for leg in LEGS:
            for item in (i for i in tenant.items if i.leg == leg):
                css = "unexplained" if not item.explained else ("anchor" if item.role == ROLE_ANCHOR else "")
                parts.append(
                    f'<tr class="{css}">'
                    + _cell(item.leg)
                    + _cell(item.cause)
                    + _cell(display_amount(item.amount, tenant.currency), True)
                    + _cell(_quantity(item), True)
                    + _cell(_detail(item))
                    + "</tr>"
                )
        parts.append("</table>")
        if tenant.flags:
            parts.append("<ul>" + "".join(f'<li class="flag">{e(flag)}</li>' for flag in tenant.flags) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(result: Reconciliation, path: Path | str) -> Path:
    target = Path(path)
    target.write_text(html_text(result), encoding="utf-8")
    return target
