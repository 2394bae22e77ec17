"""The fleet yield report written out: JSON (the API's), CSV (one row per model and currency) and a
plain-text table (the CLI's). Exact values are rounded here, once, half to even: GPU-hours and kWh to
6 places, ratios to 6, money rates to two places more than the currency's minor unit. Pure."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing.common.instants import ms_to_iso
from billing.pricing.money import minor_units, rate_places, round_half_even
from billing.reports.yield_report import Margin, ModelYield, OfferFill, YieldReport
from schemas.csv_cells import csv_cell
from schemas.units import MJ_PER_KWH, MS_PER_HOUR

HOURS_PLACES = 6  # GPU-hours and kWh written out
RATIO_PLACES = 6  # utilization, shares (as fractions of 1)


def decimal_text(value: Fraction | Decimal | int | None, places: int) -> str | None:
    """An exact value rounded once (half to even) to `places`, as text; None stays None."""
    return None if value is None else str(round_half_even(value, places))


def hours_text(ms: int) -> str:
    return str(round_half_even(Fraction(ms, MS_PER_HOUR), HOURS_PLACES))


def kwh_text(mj: int) -> str:
    return str(round_half_even(Fraction(mj, MJ_PER_KWH), HOURS_PLACES))


def _money_json(row: ModelYield, currencies: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for currency in currencies:
        places = rate_places(currency)
        out[currency] = {
            "revenue": str(row.revenue_of(currency)),
            "per_gpu": decimal_text(row.revenue_per_gpu(currency), places),
            "per_gpu_hour_available": decimal_text(row.revenue_per_gpu_hour(currency), places),
            "per_kwh": decimal_text(row.revenue_per_kwh(currency), places),
        }
    return out


def row_json(row: ModelYield, currencies: Sequence[str]) -> dict[str, Any]:
    return {
        "model": row.model or None,
        "gpus": row.gpus,
        "gpu_ms": {
            "available": row.available_ms,
            "leased": row.leased_ms,
            "idle": row.idle_ms,
            "internal": row.internal_ms,
            "busy": row.busy_ms,
            "busy_leased": row.busy_leased_ms,
            "valley_available": row.valley_available_ms,
            "valley_leased": row.valley_leased_ms,
            "astride_valley_boundary": row.split_ms,
        },
        "gpu_hours": {
            "available": hours_text(row.available_ms),
            "leased": hours_text(row.leased_ms),
            "idle": hours_text(row.idle_ms),
            "internal": hours_text(row.internal_ms),
            "busy": hours_text(row.busy_ms),
            "valley_available": hours_text(row.valley_available_ms),
            "valley_leased": hours_text(row.valley_leased_ms),
        },
        "energy_mj": row.energy_mj,
        "energy_kwh": kwh_text(row.energy_mj),
        "energy_leased_kwh": kwh_text(row.energy_leased_mj),
        "utilization": decimal_text(row.utilization, RATIO_PLACES),
        "leased_share": decimal_text(row.leased_share, RATIO_PLACES),
        "valley_share_sold": decimal_text(row.valley_share, RATIO_PLACES),
        "busy_gpu_hours_per_kwh": decimal_text(row.busy_hours_per_kwh, RATIO_PLACES),
        "revenue": _money_json(row, currencies),
    }


def to_json(report: YieldReport) -> dict[str, Any]:
    """Everything, JSON-ready: integers as integers, money and ratios as exact decimal strings."""
    currencies = report.currencies
    calendar = report.calendar
    return {
        "period": report.period,
        "timezone": report.timezone,
        "window": {"start": ms_to_iso(report.start_ms), "end": ms_to_iso(report.end_ms), "hours": report.hours},
        "calendar": None
        if calendar is None
        else {
            "card": calendar.card,
            "chosen_by": calendar.chosen_by,
            "versions": [span.label for span in calendar.spans],
            "timezone": sorted({span.calendar.timezone for span in calendar.spans}),
            "valley_periods": sorted(calendar.valley_periods),
            "valley_hours": report.valley_hours,
            "hours_astride_a_boundary": report.split_hours,
        },
        "revenue_basis": {
            "invoices": report.basis,
            "count": report.revenue.invoices,
            "pre_tax_total": {c: str(a) for c, a in report.revenue.invoiced.items()},
            "unallocated": {c: str(a) for c, a in report.revenue.unallocated.items()},
        },
        "currencies": list(currencies),
        "models": [row_json(row, currencies) for row in report.models],
        "fleet": row_json(report.fleet, currencies),
        "energy": None
        if not report.margins
        else {
            "tariff": report.tariff,
            "demand_per_kw_month": None
            if report.demand_per_kw_month is None
            else str(report.demand_per_kw_month),  # reported only: never in the energy cost
            "models": {name or "fleet": margin_json(margin) for name, margin in report.margins.items()},
        },
        "offers": [_offer_json(offer) for offer in report.offers],
        "market_revenue_per_offered_gpu_hour": {
            c: decimal_text(report.market_revenue_per_offered_gpu_hour(c), rate_places(c)) for c in currencies
        }
        if report.offers
        else {},
        "notes": list(report.notes),
    }


def _offer_json(offer: OfferFill) -> dict[str, Any]:
    return {
        "offer_id": offer.offer_id,
        "gpus": offer.gpus,
        "offered_gpu_ms": offer.offered_ms,
        "sold_gpu_ms": offer.sold_ms,
        "offered_gpu_hours": hours_text(offer.offered_ms),
        "sold_gpu_hours": hours_text(offer.sold_ms),
        "fill_rate": decimal_text(offer.fill_rate, RATIO_PLACES),
        "hours": [
            {
                "hour": ms_to_iso(hour.hour_start_ms),
                "offered_gpu_ms": hour.offered_ms,
                "sold_gpu_ms": hour.sold_ms,
                "fill_rate": decimal_text(hour.fill_rate, RATIO_PLACES),
            }
            for hour in offer.hours
        ],
    }


CSV_COLUMNS = (
    "period",
    "timezone",
    "model",
    "gpus",
    "gpu_hours_available",
    "gpu_hours_leased",
    "gpu_hours_idle",
    "gpu_hours_busy",
    "utilization",
    "leased_share",
    "energy_kwh",
    "busy_gpu_hours_per_kwh",
    "valley_gpu_hours_available",
    "valley_gpu_hours_leased",
    "valley_share_sold",
    "currency",
    "revenue",
    "revenue_per_gpu",
    "revenue_per_gpu_hour_available",
    "revenue_per_kwh",
    "energy_cost",
    "gross_margin",
    "margin_per_gpu_hour",
    "margin_per_kwh",
    "valley_energy_cost",
    "valley_gross_margin",
    "valley_margin_per_gpu_hour",
    "valley_margin_per_kwh",
)


def margin_json(margin: Margin) -> dict[str, Any]:
    """A model's energy cost and margin, money rounded once to the minor unit, ratios to rate places."""
    places, rate = minor_units(margin.currency), rate_places(margin.currency)
    return {
        "currency": margin.currency,
        "energy_cost": decimal_text(margin.energy_cost, places),
        "revenue": str(margin.revenue),
        "gross_margin": decimal_text(margin.gross_margin, places),
        "margin_per_gpu_hour": decimal_text(margin.margin_per_gpu_hour, rate),
        "margin_per_kwh": decimal_text(margin.margin_per_kwh, rate),
        "valley": {
            "energy_cost": decimal_text(margin.valley_energy_cost, places),
            "revenue": str(margin.valley_revenue),
            "gross_margin": decimal_text(margin.valley_gross_margin, places),
            "margin_per_gpu_hour": decimal_text(margin.valley_margin_per_gpu_hour, rate),
            "margin_per_kwh": decimal_text(margin.valley_margin_per_kwh, rate),
        },
    }


def csv_rows(report: YieldReport) -> list[dict[str, str]]:
    """One row per model and currency (capacity repeated), then the fleet's ("*"); no currency when
    there is no revenue at all."""
    out: list[dict[str, str]] = []
    currencies: Sequence[str] = report.currencies or ("",)
    for row in (*report.models, report.fleet):
        base = {
            "period": report.period,
            "timezone": report.timezone,
            "model": row.model or "*",
            "gpus": str(row.gpus),
            "gpu_hours_available": hours_text(row.available_ms),
            "gpu_hours_leased": hours_text(row.leased_ms),
            "gpu_hours_idle": hours_text(row.idle_ms),
            "gpu_hours_busy": hours_text(row.busy_ms),
            "utilization": decimal_text(row.utilization, RATIO_PLACES) or "",
            "leased_share": decimal_text(row.leased_share, RATIO_PLACES) or "",
            "energy_kwh": kwh_text(row.energy_mj),
            "busy_gpu_hours_per_kwh": decimal_text(row.busy_hours_per_kwh, RATIO_PLACES) or "",
            "valley_gpu_hours_available": hours_text(row.valley_available_ms),
            "valley_gpu_hours_leased": hours_text(row.valley_leased_ms),
            "valley_share_sold": decimal_text(row.valley_share, RATIO_PLACES) or "",
        }
        for currency in currencies:
            money = {
                "currency": currency,
                "revenue": "",
                "revenue_per_gpu": "",
                "revenue_per_gpu_hour_available": "",
                "revenue_per_kwh": "",
                **dict.fromkeys(CSV_COLUMNS[CSV_COLUMNS.index("energy_cost") :], ""),
            }
            margin = report.margins.get(row.model)
            if margin is not None and margin.currency == currency:
                shown = margin_json(margin)
                money.update({key: shown[key] or "" for key in ("energy_cost", "gross_margin")})
                money.update(margin_per_gpu_hour=shown["margin_per_gpu_hour"] or "")
                money.update(margin_per_kwh=shown["margin_per_kwh"] or "")
                for key in ("energy_cost", "gross_margin", "margin_per_gpu_hour", "margin_per_kwh"):
                    money[f"valley_{key}"] = shown["valley"][key] or ""
            if currency:
                places = rate_places(currency)
                money.update(
                    revenue=str(row.revenue_of(currency)),
                    revenue_per_gpu=decimal_text(row.revenue_per_gpu(currency), places) or "",
                    revenue_per_gpu_hour_available=decimal_text(row.revenue_per_gpu_hour(currency), places) or "",
                    revenue_per_kwh=decimal_text(row.revenue_per_kwh(currency), places) or "",
                )
            out.append({**base, **money})
    return out


def csv_text(report: YieldReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: csv_cell(value) for column, value in row.items()} for row in csv_rows(report))
    return buffer.getvalue()


def _percent(value: Fraction | None) -> str:
    return "-" if value is None else f"{round_half_even(value * 100, 1)} %"


def _fixed(value: Fraction | Decimal | int | None, places: int) -> str:
    return "-" if value is None else f"{round_half_even(value, places):,}"


def _text_table(report: YieldReport) -> list[list[str]]:
    """The header and one row of cells per model, then the fleet's."""
    currencies = report.currencies
    head = [
        "model",
        "GPUs",
        "avail GPU-h",
        "leased GPU-h",
        "idle GPU-h",
        "internal GPU-h",
        "util",
        "kWh",
        "busy GPU-h/kWh",
        "valley sold",
    ]
    for currency in currencies:
        head += [f"revenue {currency}", f"{currency}/GPU", f"{currency}/GPU-h", f"{currency}/kWh"]
    table = [head]
    for row in (*report.models, report.fleet):
        cells = [
            row.model or "fleet",
            str(row.gpus),
            _fixed(Fraction(row.available_ms, MS_PER_HOUR), 2),
            _fixed(Fraction(row.leased_ms, MS_PER_HOUR), 2),
            _fixed(Fraction(row.idle_ms, MS_PER_HOUR), 2),
            _fixed(Fraction(row.internal_ms, MS_PER_HOUR), 2),
            _percent(row.utilization),
            _fixed(Fraction(row.energy_mj, MJ_PER_KWH), 2),
            _fixed(row.busy_hours_per_kwh, 3),
            _percent(row.valley_share),
        ]
        for currency in currencies:
            places = minor_units(currency)
            cells += [
                f"{row.revenue_of(currency):,}",
                _fixed(row.revenue_per_gpu(currency), places),
                _fixed(row.revenue_per_gpu_hour(currency), places + 2),
                _fixed(row.revenue_per_kwh(currency), places + 2),
            ]
        table.append(cells)
    return table


def _text_heading(report: YieldReport) -> list[str]:
    """The window, the valley calendar and the revenue basis."""
    lines = [
        f"Fleet yield {report.period} ({report.timezone} month "
        f"{ms_to_iso(report.start_ms)}..{ms_to_iso(report.end_ms)})"
    ]
    calendar = report.calendar
    if calendar is not None:
        lines.append(
            f"valley: {', '.join(sorted(calendar.valley_periods))} of {', '.join(s.label for s in calendar.spans)} "
            f"({calendar.chosen_by}): {report.valley_hours} of {report.hours} hours"
        )
    pre_tax = ", ".join(f"{a:,} {c}" for c, a in report.revenue.invoiced.items()) or "none"
    lines.append(f"revenue: pre-tax, {report.revenue.invoices} {report.basis} invoice(s) of {report.period}: {pre_tax}")
    return lines


def text(report: YieldReport) -> str:
    """A plain-text table for a terminal: one line per model, then the fleet."""
    table = _text_table(report)
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [*_text_heading(report), ""]
    for index, line in enumerate(table):
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)]
        lines.append("  ".join(cells).rstrip())
        if index in (0, len(table) - 2) and not (index == 0 and len(table) == 2):
            lines.append("  ".join("-" * w for w in widths))
    if report.margins:
        fleet = report.margins[""]
        shown = margin_json(fleet)
        lines.append(
            f"energy cost ({report.tariff}): {shown['energy_cost']} {fleet.currency}; gross margin "
            f"{shown['gross_margin']}, {shown['margin_per_gpu_hour']} per GPU-hour, {shown['margin_per_kwh']} per kWh; "
            f"valley: cost {shown['valley']['energy_cost']}, margin {shown['valley']['gross_margin']}, "
            f"{shown['valley']['margin_per_gpu_hour']} per GPU-hour"
        )
    for offer in report.offers:
        lines.append(
            f"offer {offer.offer_id}: {offer.gpus} GPUs, offered {_fixed(Fraction(offer.offered_ms, MS_PER_HOUR), 2)} "
            f"GPU-h, sold {_fixed(Fraction(offer.sold_ms, MS_PER_HOUR), 2)}, fill rate {_percent(offer.fill_rate)}"
        )
    if report.offers:
        for currency in report.currencies:
            per_hour = report.market_revenue_per_offered_gpu_hour(currency)
            lines.append(
                f"valley market revenue per offered GPU-hour: {_fixed(per_hour, minor_units(currency) + 2)} {currency}"
            )
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
