"""`wattmeter-billing statement`: a tenant's statement for a period, as files.

  statement --tenant T --period YYYY-MM [--out DIR] [--format html,pdf,csv] [--locale fr_FR]
            [--rollup] [--no-drafts] [--json] [--db URL] [--usage-dir DIR]

Writes statement-<tenant>-<period>.html (with the SVG charts), .pdf (WeasyPrint, the same page) and
.csv (sections of exact quantities and plain-decimal money; see billing.statements.statement) into DIR
(default: the current directory). The period is the tenant's own month, in its time zone.

Usage comes from the hourly rollup, which the month close builds; --rollup rebuilds the period's
hours from the Parquet first. Draft invoices are included (marked as drafts) unless --no-drafts.

Exit status: 0; 2 bad input (an unknown tenant, a period that does not parse), one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from billing.common.errors import PeriodError
from billing.ledger.db import Ledger

PROG = "wattmeter-billing statement"


def _formats(text: str) -> list[str]:
    from billing.statements.statement import FORMATS

    chosen = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [form for form in chosen if form not in FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"formats are a comma-separated choice of {', '.join(FORMATS)}")
    return list(dict.fromkeys(chosen))


def add_statement_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Register `statement` on billing.cli's subparsers (--db, --json, --usage-dir come from `common`)."""
    parser = subparsers.add_parser(
        "statement",
        parents=[common],
        help="a tenant's statement for a period: HTML, PDF, CSV",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tenant", required=True, help="the tenant's id")
    parser.add_argument("--period", required=True, help="a month, YYYY-MM, in the tenant's time zone")
    parser.add_argument("--out", type=Path, default=Path("."), help="the folder to write into (default: .)")
    parser.add_argument(
        "--format",
        type=_formats,
        default=["html", "pdf", "csv"],
        dest="formats",
        help="comma-separated: html,pdf,csv (default: all three)",
    )
    parser.add_argument("--locale", default=None, help="numbers, money and dates for this locale (default en_US)")
    parser.add_argument(
        "--rollup", action="store_true", help="rebuild the period's hourly rollup from the Parquet first"
    )
    parser.add_argument("--no-drafts", action="store_true", help="leave draft invoices out")
    parser.set_defaults(handler=run_statement_command)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def run_statement_command(args: argparse.Namespace, ledger: Ledger) -> int:
    from babel import Locale, UnknownLocaleError

    from billing.common.periods import parse_period, period_bounds
    from billing.invoicing.errors import InvoicingError
    from billing.ledger.models import RollupRun, Tenant
    from billing.readmodel.hourly import rollup_period
    from billing.statements.formatting import DEFAULT_LOCALE
    from billing.statements.statement import build_statement, write_statement
    from billing.web.auth import NotFound

    locale = DEFAULT_LOCALE
    if args.locale:
        try:
            locale = str(Locale.parse(args.locale.replace("-", "_")))
        except (UnknownLocaleError, ValueError):
            return _fail(f"unknown locale {args.locale!r} (such as en_US, fr_FR, de_DE, ja_JP)")
    try:
        parse_period(args.period)
    except (InvoicingError, PeriodError) as exc:
        return _fail(str(exc))
    with ledger.transaction() as session:
        tenant = session.get(Tenant, args.tenant)
        if tenant is None:
            return _fail(f"unknown tenant {args.tenant!r}")
        try:
            period_bounds(args.period, tenant.timezone)  # within the bound for instants in its zone
        except (InvoicingError, PeriodError) as exc:
            return _fail(str(exc))
    if args.rollup:
        rollup_period(ledger, args.usage_dir, args.period)
    with ledger.transaction() as session:
        if session.get(RollupRun, args.period) is None:
            print(
                f"{PROG}: warning: the hourly rollup of {args.period} has not been built, so usage shows "
                f"as zero; run `wattmeter-billing rollup --period {args.period}` or pass --rollup",
                file=sys.stderr,
            )
        try:
            statement = build_statement(session, args.tenant, args.period, include_drafts=not args.no_drafts)
        except NotFound:
            return _fail(f"unknown tenant {args.tenant!r}")
    written = write_statement(statement, args.out, args.formats, locale)
    usage = statement.usage.total
    if args.json:
        print(
            json.dumps(
                {
                    "tenant_id": statement.tenant_id,
                    "period": statement.period,
                    "timezone": statement.timezone,
                    "currency": statement.currency,
                    "files": [str(p) for p in written],
                    "gpu_ms": usage.allocated_gpu_ms,
                    "energy_mj": usage.energy_mj,
                    "gpu_hours": str(usage.gpu_hours),
                    "kwh": str(usage.kwh),
                    "invoices": [d.invoice.reference for d in statement.invoices],
                    "total": str(statement.invoiced("total")),
                    "amount_due": str(statement.invoiced("amount_due")),
                },
                indent=2,
            )
        )
    else:
        for path in written:
            print(path)
    return 0
