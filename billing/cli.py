"""wattmeter-billing: finance's command line over the billing ledger (wiring only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from billing.common.errors import BillingError
from billing.common.instants import ms_to_iso
from billing.ledger.db import Ledger, default_actor
from billing.usage.engines import add_engine_argument, engine_named

DESCRIPTION = """\
The wattmeter billing service: tenants, rate cards, contracts, leases, credits, invoices.

  tenants       add, list                     ratecards  load FILE, list, show NAME
  contracts     add, list                     credits    grant, list
  leases        open, end, list, import, publish (to gpu.leases)
  run           rate a period into draft invoices (again: only what changed)
  invoices      list, show, finalize, void    credit-notes list
  explain       the usage behind an invoice line, re-run over the Parquet
  stripe        push, status, poll, webhook   (issued invoices to Stripe; payment state back)
  reconcile     metered <-> invoiced <-> collected for a period (exit 1: something unexplained)
  close         the month close: rate, review, finalize, push, reconcile (resumable)
  rollup        rebuild a period's hourly usage rows (what the API, portal and statements read);
                --follow keeps them up with the sink (--spend: and the month-to-date spend)
  spend         a tenant's month-to-date spend (its draft invoice) and the forecast to period end
  keys          create, revoke, list API keys   serve   the API and the portal
  statement     a tenant's statement for a period: HTML, PDF, CSV
  yield         the fleet yield report for a period (operator): text, --csv, --json

The database is $WATTMETER_BILLING_DB (default sqlite:///.wattmeter/billing.db; PostgreSQL:
postgresql+psycopg://user@host/db); the usage Parquet is $WATTMETER_USAGE_DIR.

example (a month close, step by step or all at once):
  wattmeter-billing run --period 2026-11
  wattmeter-billing invoices list --period 2026-11
  wattmeter-billing invoices finalize --period 2026-11
  wattmeter-billing stripe push --period 2026-11
  wattmeter-billing reconcile --period 2026-11 --csv recon.csv --html recon.html
  wattmeter-billing close --period 2026-11
"""


class CliError(BillingError):
    """Bad input: printed as one line, exit 2."""


def parse_instant(text: str) -> int:
    """'2026-11-01', '2026-11-01T06:00', with an offset, or integer ms; no offset means UTC."""
    from billing.leases.importers import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal amount (such as 100.00)") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite amount")
    return value


def iso(ms: int | None) -> str:
    return "-" if ms is None else ms_to_iso(ms)


def _emit(args: argparse.Namespace, payload: Any, text: Callable[[], str]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text())


# --- tenants, rate cards, contracts, credits -------------------------------------------------


def cmd_tenants(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.ledger.store import list_tenants, upsert_tenant

    with ledger.transaction() as session:
        if args.action == "add":
            tenant = upsert_tenant(
                session,
                args.actor,
                args.tenant_id,
                name=args.name,
                currency=args.currency,
                timezone=args.timezone,
                tax_jurisdiction=args.tax_jurisdiction,
                contact_email=args.email,
                stripe_mode=args.stripe_mode,
                internal=args.internal,
            )
            rows = [tenant]
        else:
            rows = list_tenants(session)
        data = [
            {
                "tenant_id": t.tenant_id,
                "name": t.name,
                "currency": t.currency,
                "timezone": t.timezone,
                "tax_jurisdiction": t.tax_jurisdiction,
                "contact_email": t.contact_email,
                "stripe_mode": t.stripe_mode,
                "stripe_customer_id": t.stripe_customer_id,
                "internal": t.internal,
            }
            for t in rows
        ]
    _emit(args, data, lambda: "\n".join(_tenant_line(d) for d in data) or "no tenants")
    return 0


def _tenant_line(d: dict[str, Any]) -> str:
    """A tenant for a terminal: escape codes and bidi controls held from before the rules are escaped."""
    from billing.ledger.tenant_rules import printable

    safe = {key: printable(str(value)) for key, value in d.items()}
    where = f"{safe['currency']} {safe['timezone']:<20} tax {safe['tax_jurisdiction']:<8}"
    internal = " (internal: the owner's own use, never invoiced)" if d.get("internal") else ""
    return f"{safe['tenant_id']:<16} {where} {safe['name']}{internal}"


def cmd_ratecards(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.ledger.store import list_rate_cards, rate_card_versions, store_rate_card
    from billing.pricing.ratecards import parse_rate_card, read_rate_card_text

    if args.action == "load":
        source = read_rate_card_text(args.file)
        card = parse_rate_card(source, args.file)
        with ledger.transaction() as session:
            _row, created = store_rate_card(session, args.actor, card, source=source)
        message = f"rate card {card.name} version {card.version} {'stored' if created else 'already stored'}"
        _emit(args, {"name": card.name, "version": card.version, "stored": created}, lambda: message)
        return 0
    with ledger.transaction() as session:
        if args.action == "show":
            versions = rate_card_versions(session, args.name)
            if not versions:
                raise CliError(f"unknown rate card {args.name!r}")
            data: Any = [v.to_dict() for v in versions]
            _emit(args, data, lambda: json.dumps(data, indent=2))
            return 0
        rows = [
            {
                "name": r.name,
                "version": r.version,
                "effective_from": iso(r.effective_from_ms),
                "currency": r.currency,
                "content_hash": r.content_hash[:12],
            }
            for r in list_rate_cards(session)
        ]
    _emit(
        args,
        rows,
        lambda: (
            "\n".join(
                f"{r['name']:<20} v{r['version']:<4} from {r['effective_from']}  {r['currency']}  {r['content_hash']}"
                for r in rows
            )
            or "no rate cards"
        ),
    )
    return 0


def cmd_contracts(args: argparse.Namespace, ledger: Ledger) -> int:
    from sqlalchemy import select

    from billing.ledger.models import Contract
    from billing.ledger.store import add_contract

    with ledger.transaction() as session:
        if args.action == "add":
            add_contract(session, args.actor, args.tenant, args.rate_card, args.start, args.end)
        query = select(Contract).order_by(Contract.tenant_id, Contract.start_ms)
        if args.tenant:
            query = query.where(Contract.tenant_id == args.tenant)
        rows = [
            {
                "id": c.id,
                "tenant_id": c.tenant_id,
                "rate_card": c.rate_card,
                "from": iso(c.start_ms),
                "to": iso(c.end_ms),
            }
            for c in session.scalars(query)
        ]
    _emit(
        args,
        rows,
        lambda: (
            "\n".join(f"{r['tenant_id']:<16} {r['rate_card']:<20} {r['from']} .. {r['to']}" for r in rows)
            or "no contracts"
        ),
    )
    return 0


def cmd_credits(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.ledger.store import credit_balances, grant_credit

    with ledger.transaction() as session:
        if args.action == "grant":
            grant_credit(session, args.actor, args.tenant, args.credit_id, args.amount, args.expires, args.note)
        rows = [
            {"credit_id": b.credit_id, "remaining": str(b.remaining), "expires": iso(b.expires_ms)}
            for b in credit_balances(session, args.tenant)
        ]
    _emit(
        args,
        rows,
        lambda: (
            "\n".join(f"{r['credit_id']:<20} remaining {r['remaining']:>12}  expires {r['expires']}" for r in rows)
            or "no credit left"
        ),
    )
    return 0


# --- invoices ---------------------------------------------------------------------------------


def invoice_json(invoice: Any) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "number": invoice.number,
        "tenant_id": invoice.tenant_id,
        "period": invoice.period,
        "status": invoice.status,
        "currency": invoice.currency,
        "period_start": iso(invoice.period_start_ms),
        "period_end": iso(invoice.period_end_ms),
        "subtotal": str(invoice.subtotal),
        "tax": str(invoice.tax),
        "total": str(invoice.total),
        "credits_applied": str(invoice.credits_applied),
        "amount_due": str(invoice.amount_due),
        "content_hash": invoice.content_hash,
        "void_reason": invoice.void_reason,
        "lines": [
            {
                "position": line.position,
                "kind": line.kind,
                "description": line.description,
                "service_period": line.service_period,
                "correction": line.correction,
                "plan": line.plan,
                "model": line.model,
                "tou_period": line.tou_period,
                "tier": line.tier,
                "card": f"{line.card_name}@{line.card_version}" if line.card_name else None,
                "quantity_base": line.quantity_base,
                "base_unit": line.base_unit,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "unit_price": str(line.unit_price),
                "amount": str(line.amount),
            }
            for line in invoice.lines
        ],
    }


def format_invoice(invoice: Any) -> str:
    title = invoice.number or f"DRAFT #{invoice.id}"
    out = [
        f"INVOICE {title}  tenant {invoice.tenant_id}  period {invoice.period} "
        f"({iso(invoice.period_start_ms)} .. {iso(invoice.period_end_ms)})  {invoice.status}"
    ]
    for line in invoice.lines:
        quantity = f"{line.quantity:>14} {line.unit:<8} x {line.unit_price:>10}" if line.unit else " " * 37
        mark = f" [service {line.service_period}]" if line.correction else ""
        out.append(f"  {line.position:>3} {line.description[:72]:<72} {quantity} = {line.amount:>12}{mark}")
    for label, value in (
        ("subtotal", invoice.subtotal),
        ("tax", invoice.tax),
        ("total", invoice.total),
        ("credits", -invoice.credits_applied),
        ("amount due", invoice.amount_due),
    ):
        out.append(f"  {label:>114} {value:>12} {invoice.currency}")
    return "\n".join(out)


def cmd_run(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.invoicing.service import run_period

    bar = _progress(args, "rating")
    engine = engine_named(args.engine)
    report = run_period(
        ledger, args.usage_dir, args.period, args.actor, args.tenant or None, progress=bar, engine=engine
    )
    if bar:
        bar.close()
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": o.tenant_id,
            "status": o.status,
            "invoice_id": o.invoice_id,
            "number": o.number,
            "currency": o.currency,
            "total": str(o.total),
            "amount_due": str(o.amount_due),
            "corrections": o.corrections,
            "credit_notes": o.credit_notes,
            "note": o.note,
        }
        for o in report.outcomes
    ]
    payload = {"period": args.period, "nothing_to_do": report.nothing_to_do, "tenants": rows, "flags": report.flags}

    def row_text(r: dict[str, Any]) -> str:
        if r["status"] in ("no invoice", "withdrawn"):  # e.g. "acme: no usage, no commitment, no correction"
            done = "no invoice" if r["status"] == "no invoice" else "draft withdrawn, no invoice"
            line = f"{r['tenant_id']}: {r['note']}: {done}"
        else:
            line = f"{r['tenant_id']:<16} {r['status']:<12} {r['total']:>12} {r['currency']}"
        line += f"  {r['corrections']} correction line(s)" if r["corrections"] else ""
        return line + (f"  credit notes {', '.join(r['credit_notes'])}" if r["credit_notes"] else "")

    def text() -> str:
        lines = [row_text(r) for r in rows]
        lines += [f"flag: {flag}" for flag in report.flags]
        if report.nothing_to_do:
            lines.append(f"nothing to do: every invoice of {args.period} is up to date")
        return "\n".join(lines)

    _emit(args, payload, text)
    return 0


def cmd_invoices(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.invoicing import service

    if args.action == "finalize":
        if bool(args.ref) == bool(args.period):
            raise CliError("finalize takes an invoice (number or id) or --period, not both")
        issued = (
            [service.finalize(ledger, args.actor, args.ref)]
            if args.ref
            else service.finalize_period(ledger, args.actor, args.period)
        )
        done = [invoice_json(i) for i in issued]
        _emit(
            args,
            done,
            lambda: (
                "\n".join(f"issued {d['number']} to {d['tenant_id']}: {d['total']} {d['currency']}" for d in done)
                or "no drafts to finalize"
            ),
        )
        return 0
    if args.action == "void":
        voided = service.void(ledger, args.actor, args.ref, args.reason or "")
        with ledger.transaction() as session:  # the void's session has closed: read the lines in a new one
            invoice = service.get_invoice(session, voided.id)
            payload = invoice_json(invoice)
        _emit(args, payload, lambda: f"voided {invoice.number}: {invoice.void_reason}")
        return 0
    with ledger.transaction() as session:
        if args.action == "show":
            if not args.ref:
                raise CliError("invoices show takes an invoice number or id")
            invoice = service.get_invoice(session, args.ref)
            _emit(args, invoice_json(invoice), lambda: format_invoice(invoice))
            return 0
        invoices = service.list_invoices(session, args.period, args.tenant, args.status)
        rows = [{k: v for k, v in invoice_json(i).items() if k != "lines"} for i in invoices]
    _emit(
        args,
        rows,
        lambda: (
            "\n".join(
                f"{r['number'] or '(draft #' + str(r['id']) + ')':<16} {r['tenant_id']:<16} "
                f"{r['period']} {r['status']:<10}"
                f" {r['total']:>12} {r['currency']}"
                for r in rows
            )
            or "no invoices"
        ),
    )
    return 0


def cmd_credit_notes(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.invoicing.service import list_credit_notes

    with ledger.transaction() as session:
        rows = [
            {
                "number": n.number,
                "tenant_id": n.tenant_id,
                "invoice_id": n.invoice_id,
                "amount": str(n.amount),
                "currency": n.currency,
                "reason": n.reason,
            }
            for n in list_credit_notes(session, args.tenant)
        ]
    _emit(
        args,
        rows,
        lambda: (
            "\n".join(
                f"{r['number']:<16} {r['tenant_id']:<16} {r['amount']:>12} {r['currency']}  {r['reason']}" for r in rows
            )
            or "no credit notes"
        ),
    )
    return 0


def cmd_explain(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.invoicing.service import explained_quantity, get_invoice
    from billing.leases.service import leases_overlapping
    from billing.usage.reader import explain

    with ledger.transaction() as session:
        invoice = get_invoice(session, args.invoice)
        lines = [line for line in invoice.lines if line.position == args.line]
        if not lines:
            raise CliError(f"invoice {args.invoice} has no line {args.line}")
        line = lines[0]
        query = line.usage_query or {}
        leases = (
            leases_overlapping(
                session, int(query["service_start_ms"]), int(query["service_end_ms"]), [str(query["tenant_id"])]
            )
            if {"tenant_id", "service_start_ms", "service_end_ms"} <= set(query)
            else []
        )
    result = explain(args.usage_dir, line.usage_query, leases)
    derived = explained_quantity(line.kind, line.tier, line.usage_query or {}, result)
    matches = derived.quantity == line.quantity_base
    records = sum(n for _, _, n, _ in derived.per_gpu)
    payload = {
        "invoice": args.invoice,
        "line": args.line,
        "description": line.description,
        "recorded_quantity": line.quantity_base,
        "unit": line.base_unit,
        "query_quantity": result.quantity,
        "line_quantity": derived.quantity,
        "rule": derived.rule,
        "matches": matches,
        "records": records,
        "files": result.files,
        "query": line.usage_query,
        "per_gpu": [
            {"gpu_uuid": g, "lease_id": lease, "records": n, "quantity": q} for g, lease, n, q in derived.per_gpu
        ],
    }
    unit = line.base_unit
    how = {
        "tier": f"; this tier's part of them: {derived.quantity} {unit}",
        "lease_rounding": f" of its lease(s); their rounding uplift: {derived.quantity} {unit}",
        "none": f"; none of them priced here now: {derived.quantity} {unit}",
        "legacy": "; recorded before invoices kept their rule: this line's tier or rounding cannot be re-derived",
    }.get(derived.rule, "")
    if derived.rule != "legacy" and "billed_ms" in ((line.usage_query or {}).get("rule") or {}):
        how += f" (the period's complete usage, less {line.usage_query['rule']['billed_ms']} {unit} billed)"
    verdict = (
        "" if derived.quantity is None else " (same)" if matches else " (DIFFERENT: usage behind this line changed)"
    )

    def text() -> str:
        out = [
            f"line {line.position}: {line.description}",
            f"  recorded {line.quantity_base} {unit}; re-run over {result.files} Parquet file(s): "
            f"{sum(q for *_, q in derived.per_gpu)} {unit} from {records} usage records{how}{verdict}",
        ]
        out += [f"  {g:<28} {lease:<24} {n:>7} records {q:>16} {unit}" for g, lease, n, q in derived.per_gpu]
        return "\n".join(out)

    _emit(args, payload, text)
    return 0 if matches or derived.quantity is None else 1


def cmd_rollup(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.readmodel.hourly import rollup_period

    if args.follow:
        from billing.readmodel.follow import FollowStep, follow

        def say(step: FollowStep) -> None:
            if args.spend and step.tenants:
                from billing.common.errors import BillingError
                from billing.spend.budgets import refresh_and_alert

                try:  # the hours are rebuilt already; a tenant that cannot be rated is said, not fatal
                    refresh_and_alert(ledger, args.usage_dir, step.tenants)
                except BillingError as exc:
                    print(f"rollup follow: month-to-date spend not refreshed: {exc}", flush=True)
            cutoff = ", ".join(f"p{p}<{o}" for p, o in sorted(step.cutoff.items()))
            print(
                f"rollup follow: {step.files} new file(s), {step.hours} hour(s) rebuilt, {step.rows} hourly rows "
                f"(cut-off {cutoff})",
                flush=True,
            )

        print(f"rollup follow: following {args.usage_dir} every {args.interval_s:g} s", flush=True)
        follow(ledger, args.usage_dir, interval_s=args.interval_s, steps=args.steps, report=say)
        return 0
    report = rollup_period(ledger, args.usage_dir, args.period)
    _emit(
        args,
        report.__dict__,
        lambda: (
            f"rollup {report.label}: {report.records} records -> {report.rows} hourly rows "
            f"[{iso(report.start_ms)}, {iso(report.end_ms)})"
        ),
    )
    return 0


def _progress(args: argparse.Namespace, what: str) -> Any:
    from billing.common.progress import tick_bar

    return tick_bar(what, " tenant", json=args.json)


# --- wiring -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattmeter-billing", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="database URL (default $WATTMETER_BILLING_DB or sqlite:///.wattmeter/billing.db)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--actor", default=default_actor(), help="who is acting, for the audit log (default $USER)")
    common.add_argument(
        "--usage-dir",
        default=os.environ.get("WATTMETER_USAGE_DIR", ".wattmeter/usage"),
        help="the usage lake the sink writes: a folder or s3://bucket/prefix, endpoint $WATTMETER_S3_ENDPOINT "
        "(default $WATTMETER_USAGE_DIR or .wattmeter/usage)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    tenants = sub.add_parser("tenants", parents=[common], help="add or list tenants")
    tenants.add_argument("action", choices=["add", "list"])
    tenants.add_argument("tenant_id", nargs="?")
    tenants.add_argument("--name")
    tenants.add_argument("--currency", default="USD", help="ISO 4217 code (default USD)")
    tenants.add_argument("--timezone", default="UTC", help="IANA zone: periods are months in it (default UTC)")
    tenants.add_argument("--tax-jurisdiction", default="*", help="key into the rate card's [tax] table")
    tenants.add_argument("--email")
    tenants.add_argument(
        "--stripe-mode",
        choices=["invoices", "meters"],
        help="push invoices to Stripe (default) or report usage to Stripe Billing meters",
    )
    tenants.add_argument(
        "--internal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the owner's own use (its training): metered like any tenant, never invoiced or pushed to Stripe",
    )
    tenants.set_defaults(handler=cmd_tenants)

    cards = sub.add_parser("ratecards", parents=[common], help="load, list or show rate cards")
    cards.add_argument("action", choices=["load", "list", "show"])
    cards.add_argument("file", nargs="?", help="load: a TOML rate card")
    cards.add_argument("--name", help="show: the card's name")
    cards.set_defaults(handler=cmd_ratecards)

    contracts = sub.add_parser("contracts", parents=[common], help="put a tenant on a rate card from a date")
    contracts.add_argument("action", choices=["add", "list"])
    contracts.add_argument("--tenant")
    contracts.add_argument("--rate-card")
    contracts.add_argument("--from", dest="start", type=parse_instant)
    contracts.add_argument("--to", dest="end", type=parse_instant)
    contracts.set_defaults(handler=cmd_contracts)

    credits = sub.add_parser("credits", parents=[common], help="grant or list prepaid credits")
    credits.add_argument("action", choices=["grant", "list"])
    credits.add_argument("--tenant", required=True)
    credits.add_argument("--id", dest="credit_id")
    credits.add_argument("--amount", type=parse_money)
    credits.add_argument("--expires", type=parse_instant)
    credits.add_argument("--note", default="")
    credits.set_defaults(handler=cmd_credits)

    run = sub.add_parser("run", parents=[common], help="rate a period into draft invoices")
    run.add_argument("--period", required=True, help="a month, YYYY-MM (in each tenant's time zone)")
    run.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    add_engine_argument(run)
    run.set_defaults(handler=cmd_run)

    invoices = sub.add_parser("invoices", parents=[common], help="list, show, finalize or void invoices")
    invoices.add_argument("action", choices=["list", "show", "finalize", "void"])
    invoices.add_argument("ref", nargs="?", help="an invoice number (WM-000001) or id")
    invoices.add_argument("--period")
    invoices.add_argument("--tenant")
    invoices.add_argument("--status", choices=["draft", "finalized", "void"])
    invoices.add_argument("--reason", help="void: why")
    invoices.set_defaults(handler=cmd_invoices)

    notes = sub.add_parser("credit-notes", parents=[common], help="list credit notes")
    notes.add_argument("action", choices=["list"])
    notes.add_argument("--tenant")
    notes.set_defaults(handler=cmd_credit_notes)

    rollup = sub.add_parser("rollup", parents=[common], help="rebuild a period's hourly usage rows (API, portal)")
    which = rollup.add_mutually_exclusive_group(required=True)
    which.add_argument("--period", help="YYYY-MM: its hours in every tenant's time zone")
    which.add_argument(
        "--follow",
        action="store_true",
        help="a service: rebuild the hours each newly durable Parquet file touches, as the sink writes them",
    )
    rollup.add_argument("--interval-s", type=float, default=1.0, help="--follow: how often the manifests are read")
    rollup.add_argument("--steps", type=int, help="--follow: stop after this many polls (tests)")
    rollup.add_argument(
        "--spend",
        action="store_true",
        help="--follow: after each step, re-rate the month-to-date spend of the tenants it touched",
    )
    rollup.set_defaults(handler=cmd_rollup)

    explain = sub.add_parser("explain", parents=[common], help="the usage behind an invoice line")
    explain.add_argument("invoice", help="invoice number or id")
    explain.add_argument("line", type=int, help="line position (see invoices show)")
    explain.set_defaults(handler=cmd_explain)

    from billing.close.cli import add_close_commands
    from billing.leases.cli import add_lease_commands
    from billing.market.cli import add_market_commands
    from billing.payments.cli import add_stripe_commands
    from billing.reconcile.cli import add_reconcile_commands
    from billing.reports.cli import add_yield_commands
    from billing.spend.cli import add_spend_commands
    from billing.web.cli import add_web_commands
    from billing.web.statement_cli import add_statement_commands

    add_lease_commands(sub)
    add_market_commands(sub, common)
    add_spend_commands(sub, common)
    add_stripe_commands(sub, common)
    add_reconcile_commands(sub, common)
    add_close_commands(sub, common)
    add_web_commands(sub, common)
    add_statement_commands(sub, common)
    add_yield_commands(sub, common)

    db = sub.add_parser("db", parents=[common], help="migrate the database to the newest schema")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(handler=lambda args, ledger: 0)
    return parser


def _check_required(args: argparse.Namespace) -> None:
    needs: dict[tuple[str, str | None], list[str]] = {
        ("tenants", "add"): ["tenant_id"],
        ("ratecards", "load"): ["file"],
        ("ratecards", "show"): ["name"],
        ("contracts", "add"): ["tenant", "rate_card", "start"],
        ("credits", "grant"): ["credit_id", "amount"],
    }
    for name in needs.get((args.command, getattr(args, "action", None)), []):
        if getattr(args, name, None) in (None, ""):
            raise CliError(f"{args.command} {args.action} needs --{name.replace('_', '-')}")


def main(argv: list[str] | None = None) -> int:
    from billing.cli_runner import run_command

    args = build_parser().parse_args(argv)
    return run_command("wattmeter-billing", args.db, lambda ledger: _checked(args, ledger))


def _checked(args: argparse.Namespace, ledger: Ledger) -> int:
    _check_required(args)
    code: int = args.handler(args, ledger)
    return code


if __name__ == "__main__":
    sys.exit(main())
