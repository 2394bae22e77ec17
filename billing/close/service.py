"""The month close: rate -> review summary -> finalize -> push -> reconcile, its state in the database.

Each step is safe to run twice on its own (rating again with nothing new writes nothing, only
drafts are finalized, the push skips what Stripe already holds, reconciling only reads), and
`month_closes` records the last step completed, so a close run again after a crash at any point
carries on from where it stopped:

- rate and review run again until the period is finalized (a draft may still change); the
  review records the drafts' content hashes, and finalizing refuses drafts that changed since
  they were reviewed (run the close again to review them);
- finalize, push and reconcile are skipped once recorded as done; a push that leaves failures
  (each shown with its cause) stops the close before reconciling: run it again.

Test hook: `WATTMETER_FAULT=close-after:<step>` ends the process (exit 137) right after the step
is recorded, as a crash there would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from billing.common.periods import parse_period
from billing.invoicing.service import finalize, run_period
from billing.ledger.db import Ledger, audit, now_ms
from billing.ledger.models import INVOICE_DRAFT, INVOICE_FINALIZED, Invoice, MonthClose
from billing.payments.client import Stripe
from billing.payments.stripe_sync import push
from billing.usage.reader import Engine
from lake.store import LakeLocation

STEPS = ("started", "rated", "reviewed", "finalized", "pushed", "reconciled")
FAULT_ENV = "WATTMETER_FAULT"


class CloseStopped(Exception):
    """The close stopped at a step that needs a person (review, push failures); the message says what to do."""


@dataclass
class Bars:
    """How the close shows progress: `bar(step, total)` returns a callable ticked once per item, with `.close()`;
    `say(line)` prints a step line."""

    bar: Callable[[str, int], Any]
    say: Callable[[str], None]


@dataclass
class CloseSummary:
    period: str
    step: str
    resumed_from: str | None = None
    drafts_reviewed: int = 0
    issued: int = 0
    amount: dict[str, str] = field(default_factory=dict)  # currency -> total amount due of the period's issued invoices
    pushed: int = 0
    push_failed: list[str] = field(default_factory=list)
    reconciled: bool = False
    unexplained: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # steps done by an earlier run


def _fault(step: str) -> None:
    if os.environ.get(FAULT_ENV) == f"close-after:{step}":
        os._exit(137)


def _record(ledger: Ledger, period: str, step: str, actor: str, **summary: Any) -> MonthClose:
    with ledger.transaction() as session:
        row = session.get(MonthClose, period, with_for_update=True)
        if row is None:
            row = MonthClose(
                period=period, step=step, started_ms=now_ms(), updated_ms=now_ms(), actor=actor, summary={}
            )
            session.add(row)
        row.step, row.updated_ms, row.actor = step, now_ms(), actor
        row.summary = {**(row.summary or {}), **summary}
        audit(session, actor, f"close.{step}", "period", period, **{k: v for k, v in summary.items() if k != "drafts"})
        session.flush()
        session.expunge(row)
    _fault(step)
    return row


def close_state(ledger: Ledger, period: str) -> MonthClose | None:
    with ledger.transaction() as session:
        row = session.get(MonthClose, period)
        if row is not None:
            session.expunge(row)
        return row


def _done(row: MonthClose | None, step: str) -> bool:
    return row is not None and STEPS.index(row.step) >= STEPS.index(step)


def _invoices(ledger: Ledger, period: str, status: str) -> list[Invoice]:
    """The period's invoices in `status`: drafts by tenant, issued ones by number."""
    order = Invoice.tenant_id if status == INVOICE_DRAFT else Invoice.number
    with ledger.transaction() as session:
        rows = list(
            session.scalars(select(Invoice).where(Invoice.period == period, Invoice.status == status).order_by(order))
        )
        session.expunge_all()
        return rows


def _totals(invoices: list[Invoice]) -> dict[str, str]:
    totals: dict[str, Decimal] = {}
    for invoice in invoices:
        totals[invoice.currency] = totals.get(invoice.currency, Decimal(0)) + invoice.amount_due
    return {currency: str(amount) for currency, amount in sorted(totals.items())}


def review_lines(drafts: list[Invoice]) -> list[str]:
    """The review summary: one line per draft, then the totals per currency."""
    lines = [
        f"  {d.tenant_id:<16} draft {d.id:<6} total {d.total:>12} {d.currency}  due {d.amount_due:>12}" for d in drafts
    ]
    for currency, amount in _totals(drafts).items():
        lines.append(f"  {len(drafts)} draft(s), amount due {amount} {currency}")
    return lines or ["  no drafts"]


def close_period(
    ledger: Ledger,
    usage_root: LakeLocation,
    period: str,
    actor: str,
    *,
    stripe: Stripe | None,
    approve: Callable[[list[Invoice]], bool],
    bars: Bars,
    reconcile: Callable[[], Any] | None = None,
    engine: Engine | None = None,
) -> CloseSummary:
    """Close `period`. `approve(drafts)` is the review gate (True: finalize them). `reconcile()` returns an
    object with `.unexplained` and `.flags` lists of one-line strings (billing.reconcile)."""
    parse_period(period)
    row = close_state(ledger, period)
    summary = CloseSummary(period, row.step if row else "started", resumed_from=row.step if row else None)
    if row is None:
        row = _record(ledger, period, "started", actor)

    # 1-2. rate and review: again until the period is finalized (a draft may still change)
    if not _done(row, "finalized"):
        bars.say(f"[1/5] rate {period}")
        bar = bars.bar("rate", 0)
        try:
            report = run_period(ledger, usage_root, period, actor, progress=bar, engine=engine)
        finally:
            bar.close()
        summary.flagged += report.flags
        row = _record(ledger, period, "rated", actor, rated_tenants=len(report.outcomes))
        drafts = _invoices(ledger, period, INVOICE_DRAFT)
        bars.say(f"[2/5] review {len(drafts)} draft(s)")
        for line in review_lines(drafts):
            bars.say(line)
        summary.drafts_reviewed = len(drafts)
        if drafts and not approve(drafts):
            raise CloseStopped(f"close {period}: stopped at review; run it again with --yes to finalize")
        row = _record(ledger, period, "reviewed", actor, drafts={str(d.id): d.content_hash for d in drafts})

        # 3. finalize exactly what was reviewed
        bars.say(f"[3/5] finalize {len(drafts)} draft(s)")
        reviewed = dict((row.summary or {}).get("drafts", {}))
        bar = bars.bar("finalize", len(reviewed))
        try:
            for draft in _invoices(ledger, period, INVOICE_DRAFT):
                if reviewed.get(str(draft.id)) != draft.content_hash:
                    raise CloseStopped(
                        f"close {period}: draft {draft.id} ({draft.tenant_id}) changed after review; "
                        "run the close again to review it"
                    )
                finalize(ledger, actor, draft.id)
                bar(draft.tenant_id)
        finally:
            bar.close()
        row = _record(ledger, period, "finalized", actor)
    else:
        summary.skipped += ["rate", "review", "finalize"]
    issued = _invoices(ledger, period, INVOICE_FINALIZED)
    summary.issued, summary.amount = len(issued), _totals(issued)
    if not _done(row, "reconciled"):  # the hourly rows the portal and statements read (a rebuild: idempotent)
        from billing.readmodel.hourly import rollup_period

        built = rollup_period(ledger, usage_root, period)
        bars.say(f"      hourly rollup for the portal: {built.records} records -> {built.rows} rows")

    # 4. push
    if not _done(row, "pushed"):
        if stripe is None:
            summary.flagged.append("Stripe is not configured (WATTMETER_STRIPE_API_KEY): nothing pushed")
            bars.say("[4/5] push: skipped, Stripe is not configured")
        else:
            bars.say(f"[4/5] push {len(issued)} invoice(s) to Stripe")
            bar = bars.bar("push", len(issued))
            try:
                pushed = push(ledger, stripe, actor, period=period, progress=bar)
            finally:
                bar.close()
            summary.push_failed = [f"{o.document} ({o.tenant_id}): {o.error}" for o in pushed.failed]
            if summary.push_failed:
                raise CloseStopped(
                    f"close {period}: {len(summary.push_failed)} push failure(s); run the close again "
                    "to retry:\n  " + "\n  ".join(summary.push_failed)
                )
            row = _record(ledger, period, "pushed", actor)
    else:
        summary.skipped.append("push")
    summary.pushed = sum(1 for o in _pushed(ledger, period) if o)

    # 5. reconcile
    if not _done(row, "reconciled") and reconcile is not None:
        bars.say(f"[5/5] reconcile {period}")
        result = reconcile()
        summary.unexplained = list(result.unexplained)
        summary.flagged += list(result.flags)
        summary.reconciled = not summary.unexplained
        if summary.reconciled:
            row = _record(ledger, period, "reconciled", actor, flagged=len(summary.flagged))
    elif _done(row, "reconciled"):
        summary.skipped.append("reconcile")
        summary.reconciled = True
    summary.step = row.step
    return summary


def _pushed(ledger: Ledger, period: str) -> list[bool]:
    from billing.payments.stripe_sync import DONE_STATES, sync_rows

    with ledger.transaction() as session:
        return [
            sync is not None and sync.state in DONE_STATES
            for inv, sync in sync_rows(session, period)
            if inv.status == INVOICE_FINALIZED
        ]
