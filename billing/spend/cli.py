"""Wiring: the spend commands of `wattmeter-billing`.

  spend --tenant T [--period P] [--refresh] [--json]   month-to-date spend and the forecast; --refresh
                                                        re-rates the current period first and records
                                                        the budget alerts it calls for (what
                                                        `rollup --follow --spend` does after each step)
  budgets set --tenant T --amount 5000.00 --thresholds 50,80,100 [--webhook URL] [--owner finance|tenant]
  budgets list [--tenant T]

Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
from typing import Any

from billing.common.instants import ms_to_iso
from billing.ledger.db import Ledger
from billing.spend.budgets import OWNERS, list_budgets, parse_thresholds, refresh_and_alert, set_budget
from billing.spend.service import MonthToDate, month_to_date


def add_spend_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "spend", parents=[common], help="a tenant's month-to-date spend and the forecast to period end"
    )
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--period", help="YYYY-MM (default: the tenant's current month)")
    parser.add_argument("--refresh", action="store_true", help="re-rate the current period from the Parquet first")
    parser.set_defaults(handler=run_spend_command)

    budgets = subparsers.add_parser("budgets", help="spend budgets and their alerts")
    bsub = budgets.add_subparsers(dest="budget_command", required=True)
    setting = bsub.add_parser("set", parents=[common], help="set a tenant's budget per period")
    setting.add_argument("--tenant", required=True)
    setting.add_argument("--amount", required=True, help="per period, in the tenant's currency, such as 5000.00")
    setting.add_argument("--thresholds", default="50,80,100", help="percentages that alert (default 50,80,100)")
    setting.add_argument("--webhook", help="where its alerts go, signed (default: the tenant's endpoint, for its own)")
    setting.add_argument("--owner", choices=OWNERS, default="finance", help="whose budget (default finance)")
    listing = bsub.add_parser("list", parents=[common], help="list budgets")
    listing.add_argument("--tenant")
    budgets.set_defaults(handler=run_budget_command)


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
        refresh_and_alert(ledger, args.usage_dir, [args.tenant], period=args.period)
    with ledger.transaction() as session:
        mtd = month_to_date(session, args.tenant, args.period)
    print(json.dumps(spend_json(mtd), indent=2) if args.json else spend_text(mtd))
    return 0


def run_budget_command(args: argparse.Namespace, ledger: Ledger) -> int:
    with ledger.transaction() as session:
        if args.budget_command == "set":
            view, secret = set_budget(
                session,
                args.tenant,
                args.owner,
                args.amount,
                parse_thresholds(args.thresholds),
                args.webhook,
                args.actor,
            )
            where = "alerts in the portal"
            if view.webhook_url:
                where = f"alerts to {view.webhook_url}, signed with {secret}"
            elif view.owner == "tenant":
                where = "alerts to the tenant's webhook endpoint and in the portal"
            print(
                f"budget {view.budget_id}: {view.amount} {view.currency} a period, at "
                f"{', '.join(f'{t} %' for t in view.thresholds)}; {where}"
            )
            return 0
        views = list_budgets(session, args.tenant)
    if args.json:
        print(json.dumps([{**v.__dict__, "amount": str(v.amount)} for v in views], indent=2))
    else:
        for v in views:
            levels = ",".join(map(str, v.thresholds))
            print(f"{v.budget_id:<32} {v.amount:>14} {v.currency}  {levels}  {v.webhook_url or '-'}")
    return 0
