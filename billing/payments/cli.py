"""`wattmeter-billing stripe ...`: push issued invoices, see where each stands, take payment state back.

  stripe push [--period P] [--invoice WM-000001 ...]   customer -> items -> invoice -> finalize; voids; credit notes
  stripe status [--period P]                           each issued invoice's Stripe state, payment and last failure
  stripe poll                                          apply Stripe events since the last poll (webhook fallback)
  stripe webhook [--host H] [--port N]                 serve the signed webhook endpoint (uvicorn)

Stripe settings come from the environment (`billing.payments.client`): WATTMETER_STRIPE_API_KEY,
WATTMETER_STRIPE_API_BASE (a stripe-mock or localstripe URL in tests and the demo),
WATTMETER_STRIPE_WEBHOOK_SECRET. A push that leaves failures prints each with its cause and exits 1;
running it again carries on where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from billing.ledger.db import Ledger
from billing.payments.errors import StripeConfigError


def add_stripe_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    stripe = subparsers.add_parser(
        "stripe",
        parents=[common],
        help="push invoices to Stripe; payment state back",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stripe.add_argument("action", choices=["push", "status", "poll", "webhook"])
    stripe.add_argument("--period", help="YYYY-MM")
    stripe.add_argument("--invoice", action="append", default=[], help="push: only this invoice number (repeatable)")
    stripe.add_argument("--api-base", help="Stripe API URL (default $WATTMETER_STRIPE_API_BASE, else Stripe)")
    stripe.add_argument("--host", default="127.0.0.1", help="webhook: address to listen on")
    stripe.add_argument("--port", type=int, default=8402, help="webhook: port (default 8402)")
    stripe.set_defaults(handler=run_stripe_command)


def _line(message: str) -> None:
    print(f"  {message}", file=sys.stderr)


def run_stripe_command(args: argparse.Namespace, ledger: Ledger) -> int:
    import json

    from billing.payments.client import Stripe, StripeSettings

    if args.action == "status":
        return _status(args, ledger)
    if args.action == "webhook":
        return _serve(args, ledger)
    stripe = Stripe(StripeSettings.from_env(api_base=args.api_base), notice=_line)
    if args.action == "poll":
        from billing.payments.events import poll

        applied = poll(ledger, stripe)
        if args.json:
            print(json.dumps([a.__dict__ for a in applied], indent=2))
        else:
            for a in applied:
                print(f"{a.event_id} {a.type}: {a.outcome}")
            print(f"{len(applied)} event(s), {sum(1 for a in applied if a.outcome == 'duplicate')} already applied")
        return 0
    from billing.common.progress import tick_bar
    from billing.payments.stripe_sync import push

    bar = tick_bar("stripe push", " invoice", json=args.json)
    try:
        report = push(ledger, stripe, args.actor, period=args.period, numbers=args.invoice, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps([o.__dict__ for o in report.outcomes], indent=2))
    else:
        for o in report.outcomes:
            where = f" -> {o.stripe_id}" if o.stripe_id else ""
            print(f"{o.document:<14} {o.tenant_id:<16} {o.action}{where}" + (f": {o.error}" if o.error else ""))
        print(
            f"{len(report.outcomes)} document(s), {len(report.failed)} failed" if report.outcomes else "nothing to push"
        )
    return 1 if report.failed else 0


def _status(args: argparse.Namespace, ledger: Ledger) -> int:
    import json

    from billing.payments.stripe_sync import sync_rows

    with ledger.transaction() as session:
        rows = [
            {
                "number": inv.number,
                "tenant_id": inv.tenant_id,
                "period": inv.period,
                "status": inv.status,
                "amount_due": str(inv.amount_due),
                "currency": inv.currency,
                "stripe_state": sync.state if sync else "not pushed",
                "stripe_invoice_id": sync.stripe_invoice_id if sync else None,
                "payment_status": sync.payment_status if sync else None,
                "amount_paid": str(sync.amount_paid) if sync and sync.amount_paid is not None else None,
                "attempts": sync.attempts if sync else 0,
                "last_error": sync.last_error if sync else None,
            }
            for inv, sync in sync_rows(session, args.period)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        error = f"  last error: {r['last_error']}" if r["last_error"] else ""
        print(
            f"{r['number']:<12} {r['tenant_id']:<16} {r['period']} {r['status']:<9} {r['amount_due']:>12} "
            f"{r['currency']}  stripe {r['stripe_state']:<10} {r['payment_status'] or '-':<13}"
            f"{r['stripe_invoice_id'] or ''}{error}"
        )
    if not rows:
        print("no issued invoices")
    return 0


def _serve(args: argparse.Namespace, ledger: Ledger) -> int:
    import os

    import uvicorn

    from billing.payments.webhook import webhook_app

    secret = os.environ.get("WATTMETER_STRIPE_WEBHOOK_SECRET")
    if not secret:
        raise StripeConfigError("no webhook secret: set WATTMETER_STRIPE_WEBHOOK_SECRET (whsec_...)")
    uvicorn.run(webhook_app(ledger, secret), host=args.host, port=args.port, log_level="warning")
    return 0
