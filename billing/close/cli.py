"""`wattmeter-billing close --period P`: the month close, resumable (see billing.close.service).

  close --period 2026-11            rate, show the review summary, ask before finalizing (a terminal)
  close --period 2026-11 --yes      finalize what the review shows without asking (scripts, the demo)
  close --period 2026-11 --status   where the close stands

Exit 0: closed and reconciled; 1: stopped (review declined, push failures, unexplained differences),
each reason printed; 2: bad input. Run it again after any stop or crash: it carries on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from billing.ledger.db import Ledger
from billing.usage.engines import add_engine_argument, engine_named


def add_close_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    close = subparsers.add_parser(
        "close",
        parents=[common],
        help="close a month: rate, review, finalize, push, reconcile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    close.add_argument("--period", required=True, help="YYYY-MM")
    close.add_argument("--yes", action="store_true", help="finalize the reviewed drafts without asking")
    close.add_argument("--no-stripe", action="store_true", help="do not push (and do not compare with Stripe)")
    add_engine_argument(close)
    close.add_argument(
        "--no-stripe-compare",
        action="store_true",
        help="push, but reconcile without reading Stripe back (a stateless peer such as stripe-mock); "
        "collected comes from the payment events received",
    )
    close.add_argument("--status", action="store_true", help="only print where the close stands")
    close.add_argument("--report-dir", help="write the reconciliation CSV and HTML here")
    close.set_defaults(handler=run_close_command)


def _bars(args: argparse.Namespace) -> Any:
    from billing.close.service import Bars

    def bar(step: str, total: int) -> Any:
        from billing.common.progress import tick_bar

        return tick_bar(f"  {step}", " item", json=args.json, total=total or None, leave=True) or _Silent()

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    return Bars(bar, say)


class _Silent:
    def __call__(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


def _approve(args: argparse.Namespace) -> Any:
    def approve(drafts: list[Any]) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            return False
        answer = input(f"finalize these {len(drafts)} invoice(s)? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    return approve


def run_close_command(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.close.service import CloseStopped, close_period, close_state
    from billing.payments.client import Stripe, StripeSettings

    if args.status:
        row = close_state(ledger, args.period)
        state = {
            "period": args.period,
            "step": row.step if row else "not started",
            "updated_ms": row.updated_ms if row else None,
        }
        print(json.dumps(state) if args.json else f"close {args.period}: {state['step']}")
        return 0
    stripe = None
    if not args.no_stripe and os.environ.get("WATTMETER_STRIPE_API_KEY"):
        stripe = Stripe(StripeSettings.from_env(), notice=lambda line: print(f"  {line}", file=sys.stderr))
    bars = _bars(args)
    engine = engine_named(args.engine)

    def reconcile() -> Any:
        from billing.reconcile.service import reconcile as run_reconcile

        compare = None if args.no_stripe_compare else stripe
        skipped = "--no-stripe-compare" if args.no_stripe_compare else None
        result = run_reconcile(
            ledger, args.usage_dir, args.period, stripe=compare, stripe_skipped=skipped, engine=engine
        )
        if args.report_dir:
            from pathlib import Path

            from billing.reconcile.report import write_csv, write_html

            out = Path(args.report_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_csv(result, out / f"reconcile-{args.period}.csv")
            write_html(result, out / f"reconcile-{args.period}.html")
        return result

    try:
        summary = close_period(
            ledger,
            args.usage_dir,
            args.period,
            args.actor,
            stripe=stripe,
            approve=_approve(args),
            bars=bars,
            reconcile=reconcile,
            engine=engine,
        )
    except CloseStopped as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        amount = ", ".join(f"{v} {k}" for k, v in summary.amount.items()) or "0"
        if summary.resumed_from == "reconciled":
            note = " (closed earlier: nothing to do)"
        else:
            note = f" (carried on after {summary.resumed_from})" if summary.resumed_from else ""
        print(f"close {summary.period}: {summary.step}{note}")
        print(f"  invoices issued: {summary.issued}, amount due {amount}")
        print(f"  pushed to Stripe: {summary.pushed} of {summary.issued}")
        print(f"  reconciled: {'yes' if summary.reconciled else 'NO'}")
        for line in summary.unexplained:
            print(f"  unexplained: {line}")
        for line in summary.flagged:
            print(f"  flagged: {line}")
    return 0 if summary.reconciled else 1
