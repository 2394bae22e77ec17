"""`wattmeter-billing yield`: the operator's fleet yield report for a period.

  yield --period YYYY-MM [--timezone ZONE] [--calendar-card NAME] [--valley-period NAME]...
        [--include-drafts] [--csv FILE] [--json] [--db URL]

Per GPU model and for the fleet: GPUs; GPU-hours available (leased + idle metered time), leased
and idle; utilization (busy over leased); energy in kWh and busy GPU-hours per kWh; revenue per
GPU, per GPU-hour available and per kWh; the share of valley capacity sold.

The period is a month in --timezone (default UTC), read from the hourly rollup
(`wattmeter-billing rollup --period P`, which the month close runs). Revenue is the pre-tax
total of the invoices labelled P (each tenant's own month), issued ones only unless
--include-drafts, per currency. The valley is the calendar of --calendar-card (default: the card
most contracts in the period name), periods named by --valley-period (default: valley).

Exit status: 0; 2 bad input (a period or zone that does not parse, an unknown card), one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from billing.common.instants import ms_to_iso
from billing.ledger.db import Ledger
from billing.reports.errors import ReportError

PROG = "wattmeter-billing yield"


def add_yield_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Register `yield` on billing.cli's subparsers (--db, --json, --usage-dir come from `common`)."""
    parser = subparsers.add_parser(
        "yield",
        parents=[common],
        help="the fleet yield report for a period (operator): text, --csv, --json",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--period", required=True, help="a month, YYYY-MM, in --timezone")
    parser.add_argument("--timezone", default="UTC", help="the operator's time zone for the month (default UTC)")
    parser.add_argument("--calendar-card", help="the rate card whose TOU calendar says which hours are valley")
    parser.add_argument(
        "--valley-period", action="append", help="a calendar period that counts as valley (repeatable; default valley)"
    )
    parser.add_argument("--include-drafts", action="store_true", help="count draft invoices as revenue too")
    parser.add_argument("--csv", type=Path, help="also write one row per model and currency to this CSV file")
    parser.add_argument("--tariff", help="the utility tariff for energy cost and margin (default: the only one)")
    parser.set_defaults(handler=run_yield_command)

    tariffs = subparsers.add_parser("tariffs", help="the operator's utility tariffs (energy cost, margin)")
    tsub = tariffs.add_subparsers(dest="tariff_command", required=True)
    loading = tsub.add_parser("load", parents=[common], help="load a tariff version from TOML")
    loading.add_argument("file", type=Path)
    tsub.add_parser("list", parents=[common], help="list tariff versions")
    tariffs.set_defaults(handler=run_tariff_command)


def run_tariff_command(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.ledger.store import store_tariff, tariff_versions
    from billing.pricing.ratecards import read_rate_card_text
    from billing.pricing.tariffs import parse_tariff

    with ledger.transaction() as session:
        if args.tariff_command == "load":
            tariff = parse_tariff(read_rate_card_text(args.file), str(args.file))
            _, added = store_tariff(session, args.actor, tariff)
            print(f"tariff {tariff.label} ({tariff.currency}, PUE {tariff.pue}): {'loaded' if added else 'unchanged'}")
            return 0
        for tariff in tariff_versions(session):
            prices = ", ".join(f"{period} {price}" for period, price in sorted(tariff.energy_kwh.items()))
            print(f"{tariff.label:<24} from {ms_to_iso(tariff.effective_from_ms)}  {tariff.currency}/kWh {prices}")
    return 0


def run_yield_command(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.reports import yield_report as core
    from billing.reports.service import yield_report

    try:
        report = yield_report(
            ledger,
            args.period,
            timezone=args.timezone,
            calendar_card=args.calendar_card,
            valley_periods=tuple(args.valley_period or ("valley",)),
            include_drafts=args.include_drafts,
            tariff=args.tariff,
        )
        if args.csv:
            args.csv.write_text(core.csv_text(report), encoding="utf-8")
    except (ReportError, OSError) as exc:
        print(f"{PROG}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(core.to_json(report), indent=2) if args.json else core.text(report))
    return 0
