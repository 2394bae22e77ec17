"""Wiring: `wattmeter-billing spend --tenant T [--period P] [--refresh] [--json]`: a tenant's
month-to-date spend (its draft invoice as it stands) and the forecast to period end.
`--refresh` re-rates the current period from the Parquet first (what `rollup --follow --spend`
does after each step). Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
from typing import Any

from billing.common.instants import ms_to_iso
from billing.ledger.db import Ledger
from billing.spend.service import MonthToDate, month_to_date, refresh


def add_spend_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "spend", parents=[common], help="a tenant's month-to-date spend and the forecast to period end"
    )
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--period", help="YYYY-MM (default: the tenant's current month)")
    parser.add_argument("--refresh", action="store_true", help="re-rate the current period from the Parquet first")
    parser.set_defaults(handler=run_spend_command)


def spend_json(mtd: MonthToDate) -> dict[str, Any]:
    return {
        "tenant_id": mtd.tenant_id,
        "period": mtd.period,
        "currency": mtd.currency,
        "status": mtd.status,
        "as_of": None if mtd.rated_ms is None else ms_to_iso(mtd.rated_ms),
        "lines": [
            {"kind": line.kind, "description": line.description, "amount": str(line.amount)} for line in mtd.lines
        ],
        "subtotal": str(mtd.subtotal),
        "tax": str(mtd.tax),
        "total": str(mtd.total),
        "amount_due": str(mtd.amount_due),
        "forecast_subtotal": None if mtd.forecast_subtotal is None else str(mtd.forecast_subtotal),
        "forecast_method": mtd.forecast_method,
    }


def spend_text(mtd: MonthToDate) -> str:
    when = "nothing rated yet" if mtd.rated_ms is None else f"as of {ms_to_iso(mtd.rated_ms)}"
    kind = {"draft": "month to date", "finalized": "issued", "none": "month to date"}.get(mtd.status, mtd.status)
    out = [f"{mtd.tenant_id} {mtd.period} {kind} ({when})"]
    out += [f"  {line.amount:>14} {mtd.currency}  {line.description}" for line in mtd.lines]
    out.append(f"  subtotal {mtd.subtotal} {mtd.currency}, tax {mtd.tax}, total {mtd.total}, due {mtd.amount_due}")
    if mtd.forecast_subtotal is not None:
        out.append(
            f"  forecast {mtd.forecast_subtotal} {mtd.currency} before tax by {ms_to_iso(mtd.end_ms)} "
            f"({mtd.forecast_method})"
        )
    return "\n".join(out)


def run_spend_command(args: argparse.Namespace, ledger: Ledger) -> int:
    if args.refresh:
        refresh(ledger, args.usage_dir, [args.tenant])
    with ledger.transaction() as session:
        mtd = month_to_date(session, args.tenant, args.period)
    print(json.dumps(spend_json(mtd), indent=2) if args.json else spend_text(mtd))
    return 0
