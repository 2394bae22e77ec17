"""Wiring: the `reconcile` command of `wattmeter-billing` (also `python -m billing.reconcile.cli reconcile ...`).

  reconcile --period YYYY-MM [--tenant T]... [--csv FILE] [--html FILE] [--json] [--no-stripe]
            [--db URL] [--usage-dir DIR]

Sets metered (the usage Parquet), invoiced (the billing database) and collected (Stripe) against
each other per tenant and in total; every difference gets a named cause or is unexplained.
Stripe is asked when WATTMETER_STRIPE_API_KEY is set (WATTMETER_STRIPE_API_BASE for a test peer)
and --no-stripe is not given; otherwise the collected leg uses wattmeter's mirror of Stripe's
webhooks, and a flag says so.

Exit status: 0 every difference explained; 1 something unexplained (each printed as one line
naming tenant, invoice and line); 2 bad input (a period that does not parse, no usage directory,
an unreachable database or Stripe), one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from billing.cli_runner import run_command
from billing.ledger.db import Ledger, default_actor
from billing.usage.engines import add_engine_argument, engine_named

PROG = "wattmeter-billing reconcile"


def add_reconcile_commands(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Register `reconcile` on an argparse subparsers object. With `common` (billing.cli's parent
    parser: --db, --json, --actor, --usage-dir) those options come from it; without, they are added
    here with the same dests and defaults. The parser's `handler` is `run_reconcile_command`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "reconcile",
        parents=[common] if common is not None else [],
        help="metered <-> invoiced <-> collected for a period: every difference named, or unexplained",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if common is None:
        parser.add_argument(
            "--db", help="database URL (default $WATTMETER_BILLING_DB or sqlite:///.wattmeter/billing.db)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON (everything; money as strings)")
        parser.add_argument("--actor", default=default_actor(), help="who is acting (reconciling writes nothing)")
        parser.add_argument(
            "--usage-dir",
            default=os.environ.get("WATTMETER_USAGE_DIR", ".wattmeter/usage"),
            help="the usage lake the sink writes: a folder or s3://bucket/prefix (default $WATTMETER_USAGE_DIR)",
        )
    parser.add_argument("--period", required=True, help="a month, YYYY-MM (in each tenant's time zone)")
    parser.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    add_engine_argument(parser)
    parser.add_argument("--csv", type=Path, help="write one row per tenant x cause to this CSV file")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report to this file")
    parser.add_argument(
        "--no-stripe", action="store_true", help="do not ask Stripe (collected from the webhook mirror)"
    )
    parser.set_defaults(handler=run_reconcile_command)
    return parser


def _stripe(args: argparse.Namespace) -> tuple[Any, str | None]:
    if args.no_stripe:
        return None, "--no-stripe"
    if not os.environ.get("WATTMETER_STRIPE_API_KEY"):
        return None, "WATTMETER_STRIPE_API_KEY is not set"
    from billing.payments.client import Stripe, StripeSettings

    return Stripe(StripeSettings.from_env(), notice=lambda line: print(f"{PROG}: {line}", file=sys.stderr)), None


def _run(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.reconcile import report
    from billing.reconcile.service import reconcile

    stripe, skipped = _stripe(args)
    result = reconcile(
        ledger,
        args.usage_dir,
        args.period,
        stripe,
        tenant_ids=args.tenant or None,
        stripe_skipped=skipped,
        engine=engine_named(args.engine),
    )
    if args.csv:
        report.write_csv(result, args.csv)
    if args.html:
        report.write_html(result, args.html)
    if args.json:
        print(json.dumps(report.to_json(result), indent=2))
    else:
        print(report.text(result))
    return 0 if result.ok else 1


def run_reconcile_command(args: argparse.Namespace, ledger: Ledger | None = None) -> int:
    """Run a parsed `reconcile` command; `ledger` None opens the one named by --db or
    $WATTMETER_BILLING_DB. Returns the exit status (2 with one line on stderr for bad input)."""
    return run_command(PROG, args.db, lambda opened: _run(args, opened), ledger)


def main(argv: list[str] | None = None) -> int:
    """`python -m billing.reconcile.cli reconcile ...`: the command without the rest of billing."""
    parser = argparse.ArgumentParser(prog="python -m billing.reconcile.cli")
    add_reconcile_commands(parser.add_subparsers(dest="command", required=True))
    return run_reconcile_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
