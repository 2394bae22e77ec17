"""wattmeter-billing: turn metered usage into invoices."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from billing.ratecards import DEFAULT_CARD, RateCardError, load_rate_card
from billing.rating import Invoice, rate
from billing.usage_reader import UsageDataError, tenant_usage
from schemas.units import datetime_to_ms, ms_to_datetime

DESCRIPTION = """\
The wattmeter billing service.

  invoice  Reads the usage Parquet (written by `wattmeter-streams sink`) for a period,
           sums each tenant's GPU time and energy, and prices them with a rate card
           (flat price per GPU-hour and per kWh; Decimal money, rounded per line to the
           cent, half to even). Prints one invoice per tenant, or JSON with --json.

example:
  wattmeter-billing invoice --usage-dir .wattmeter/usage --from 2026-11-01 --to 2026-12-01
"""


def parse_instant(text: str) -> int:
    """'2026-11-01', '2026-11-01T06:00' or with an offset; no offset means UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or date-time (e.g. 2026-11-01T00:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return datetime_to_ms(value)


def format_invoice(invoice: Invoice) -> str:
    start = ms_to_datetime(invoice.period_start_ms).isoformat()
    end = ms_to_datetime(invoice.period_end_ms).isoformat()
    out = [f"INVOICE  tenant {invoice.tenant_id}   period {start} .. {end}   rate card {invoice.rate_card}"]
    for line in invoice.lines:
        out.append(
            f"  {line.description:<10} {line.quantity:>16.6f} {line.unit:<9} x {line.unit_price:>8} "
            f"{invoice.currency} = {line.amount:>12} {invoice.currency}"
        )
    out.append(f"  {'TOTAL':<10} {'':>16} {'':<9}   {'':>8}     = {invoice.total:>12} {invoice.currency}")
    return "\n".join(out)


def invoice_json(invoice: Invoice) -> dict:
    return {
        "tenant_id": invoice.tenant_id,
        "period_start_ms": invoice.period_start_ms,
        "period_end_ms": invoice.period_end_ms,
        "currency": invoice.currency,
        "rate_card": invoice.rate_card,
        "allocated_gpu_ms": invoice.usage.allocated_gpu_ms,
        "energy_mj": invoice.usage.energy_mj,
        "lines": [
            {
                "description": l.description,
                "quantity": str(l.quantity),
                "unit": l.unit,
                "unit_price": str(l.unit_price),
                "amount": str(l.amount),
            }
            for l in invoice.lines
        ],
        "total": str(invoice.total),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattmeter-billing", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("invoice", help="print each tenant's invoice for a period")
    inv.add_argument(
        "--usage-dir",
        type=Path,
        default=Path(os.environ.get("WATTMETER_USAGE_DIR", ".wattmeter/usage")),
        help="Parquet root written by the sink (default $WATTMETER_USAGE_DIR or .wattmeter/usage)",
    )
    inv.add_argument("--from", dest="start", type=parse_instant, required=True, help="period start (UTC, inclusive)")
    inv.add_argument("--to", dest="end", type=parse_instant, required=True, help="period end (UTC, exclusive)")
    inv.add_argument("--rate-card", type=Path, default=DEFAULT_CARD, help="TOML rate card (default: flat)")
    inv.add_argument("--tenant", help="only this tenant")
    inv.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.end <= args.start:
        print("wattmeter-billing: --to must be after --from", file=sys.stderr)
        return 2
    try:
        card = load_rate_card(args.rate_card)
        usages = tenant_usage(args.usage_dir, args.start, args.end)
    except (RateCardError, UsageDataError) as exc:
        print(f"wattmeter-billing: {exc}", file=sys.stderr)
        return 2
    invoices = [rate(u, card, args.start, args.end) for u in usages if args.tenant in (None, u.tenant_id)]
    if args.json:
        print(json.dumps([invoice_json(i) for i in invoices], indent=2))
    else:
        if not invoices:
            print("no billable usage in this period")
        for invoice in invoices:
            print(format_invoice(invoice))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
