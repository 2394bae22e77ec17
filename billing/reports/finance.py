"""Adapter: finance's month at a glance, from the billing database (and, for the reconciliation,
the usage Parquet), as JSON-ready dicts for the API and the finance page.

- invoices of the period (by their `period` label, each tenant's month) by status, with counts and
  totals (subtotal, tax, total, amount due) per currency; tenants under contract with no invoice;
- the Stripe sync of the period's invoices: not pushed, in progress, pushed (finalized in Stripe,
  or reported to its meters), failed (the last error as Stripe's client gave it), voided; and the
  payment states Stripe reported back, with the amount paid per currency;
- the month close: the last step done, who and when;
- the reconciliation (`billing.reconcile.service.reconcile`, Stripe not consulted: the webhook
  mirror) with its unexplained lines, its flags and every row that is not explained.

The reconciliation reads the Parquet, so it is cached per period: an entry is used again while the
facts it was built from are unchanged (the sink's cut-off, the newest audit entry, the newest
Stripe sync change) and it is younger than `RECONCILE_TTL_S` (open leases grow with the clock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.common.errors import BillingError, PeriodError
from billing.common.instants import ms_to_iso
from billing.ledger.db import Ledger
from billing.ledger.models import (
    INVOICE_DRAFT,
    INVOICE_FINALIZED,
    INVOICE_VOID,
    AuditEntry,
    Contract,
    Invoice,
    MonthClose,
    StripeInvoiceSync,
    Tenant,
)
from billing.reconcile.waterfall import Reconciliation
from billing.reports.errors import ReportError
from lake.store import LakeLocation

STATUSES = (INVOICE_DRAFT, INVOICE_FINALIZED, INVOICE_VOID)
SYNC_DONE = ("finalized", "reported")
RECONCILE_TTL_S = 30.0
_MONEY_FIELDS = ("subtotal", "tax", "total", "amount_due")


def _add(totals: dict[str, dict[str, Decimal]], currency: str, **amounts: Decimal) -> None:
    held = totals.setdefault(currency, {name: Decimal(0) for name in amounts})
    for name, amount in amounts.items():
        held[name] = held.get(name, Decimal(0)) + amount


def _strings(totals: dict[str, dict[str, Decimal]]) -> dict[str, dict[str, str]]:
    return {c: {k: str(v) for k, v in sorted(m.items())} for c, m in sorted(totals.items())}


def _invoices(session: Session, period: str) -> tuple[dict[str, Any], list[Invoice]]:
    invoices = list(session.scalars(select(Invoice).where(Invoice.period == period).order_by(Invoice.id)))
    by_status: dict[str, Any] = {}
    for status in STATUSES:
        mine = [i for i in invoices if i.status == status]
        totals: dict[str, dict[str, Decimal]] = {}
        for invoice in mine:
            _add(totals, invoice.currency, **{name: getattr(invoice, name) for name in _MONEY_FIELDS})
        by_status[status] = {"count": len(mine), "totals": _strings(totals)}
    invoiced = {i.tenant_id for i in invoices if i.status != INVOICE_VOID}
    under_contract = set(session.scalars(select(Contract.tenant_id).distinct()))
    return {
        "by_status": by_status,
        "count": len(invoices),
        "tenants_without_invoice": sorted(under_contract - invoiced),
    }, invoices


def _stripe(session: Session, invoices: list[Invoice]) -> dict[str, Any]:
    ids = [i.id for i in invoices if i.status != INVOICE_DRAFT]
    syncs = (
        {
            row.invoice_id: row
            for row in session.scalars(select(StripeInvoiceSync).where(StripeInvoiceSync.invoice_id.in_(ids)))
        }
        if ids
        else {}
    )
    counts = {"not_pushed": 0, "in_progress": 0, "pushed": 0, "failed": 0, "voided": 0}
    failed: list[dict[str, Any]] = []
    payments: dict[str, int] = {}
    paid: dict[str, Decimal] = {}
    for invoice in invoices:
        if invoice.status == INVOICE_DRAFT:
            continue
        sync = syncs.get(invoice.id)
        if sync is None:
            if invoice.status == INVOICE_FINALIZED:
                counts["not_pushed"] += 1
            continue
        if sync.state == "voided":
            counts["voided"] += 1
        elif sync.state in SYNC_DONE:
            counts["pushed"] += 1
        elif sync.last_error:
            counts["failed"] += 1
            failed.append(
                {
                    "invoice": invoice.number,
                    "tenant_id": invoice.tenant_id,
                    "state": sync.state,
                    "attempts": sync.attempts,
                    "last_error": sync.last_error,
                    "last_attempt": None if sync.last_attempt_ms is None else ms_to_iso(sync.last_attempt_ms),
                }
            )
        else:
            counts["in_progress" if sync.attempts else "not_pushed"] += 1
        status = sync.payment_status or "none"
        payments[status] = payments.get(status, 0) + 1
        if sync.amount_paid:
            paid[invoice.currency] = paid.get(invoice.currency, Decimal(0)) + sync.amount_paid
    return {
        **counts,
        "failures": failed,
        "payment_status": dict(sorted(payments.items())),
        "amount_paid": {c: str(a) for c, a in sorted(paid.items())},
    }


def _close(session: Session, period: str) -> dict[str, Any] | None:
    row = session.get(MonthClose, period)
    if row is None:
        return None
    return {
        "step": row.step,
        "started": ms_to_iso(row.started_ms),
        "updated": ms_to_iso(row.updated_ms),
        "actor": row.actor,
        "summary": row.summary,
    }


def reconciliation_json(result: Reconciliation) -> dict[str, Any]:
    """The reconciliation as the API gives it: the report's JSON, plus `flagged`: every row that is
    not explained, with its tenant and invoice."""
    from billing.reconcile import report

    data = report.to_json(result)
    data["flagged"] = [
        {"tenant_id": tenant["tenant_id"], "invoice": tenant["invoice"], **item}
        for tenant in data["tenants"]
        for item in tenant["items"]
        if not item["explained"]
    ]
    return data


# -- the reconciliation, cached --------------------------------------------------------------------


@dataclass
class _Entry:
    fingerprint: Hashable
    built: float
    result: Reconciliation


class ReconcileCache:
    """Reconciliations per (ledger, usage root, period), rebuilt when the facts change or after `ttl_s`."""

    def __init__(self, ttl_s: float = RECONCILE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.builds = 0
        self._entries: dict[tuple[str, str, str], _Entry] = {}
        self._lock = threading.Lock()

    @staticmethod
    def fingerprint(ledger: Ledger, usage_root: LakeLocation) -> Hashable:
        from billing.usage.reader import read_cutoff

        with ledger.transaction() as session:
            audit = session.scalar(select(func.max(AuditEntry.id)))
            stripe = session.execute(
                select(func.max(StripeInvoiceSync.updated_ms), func.count()).select_from(StripeInvoiceSync)
            ).one()
        return (tuple(sorted(read_cutoff(usage_root).items())), audit, tuple(stripe))

    def get(self, ledger: Ledger, usage_root: LakeLocation, period: str) -> Reconciliation:
        from billing.reconcile.errors import ReconcileError
        from billing.reconcile.service import reconcile

        key = (str(ledger.engine.url), str(usage_root), period)
        fingerprint = self.fingerprint(ledger, usage_root)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.fingerprint == fingerprint and self.clock() - entry.built < self.ttl_s:
                return entry.result
            try:
                result = reconcile(ledger, usage_root, period, stripe=None, stripe_skipped="the finance view")
            except ReconcileError as exc:
                raise ReportError(str(exc), subject=exc.subject) from None
            self.builds += 1
            if len(self._entries) > 64:
                self._entries.clear()
            self._entries[key] = _Entry(fingerprint, self.clock(), result)
            return result


CACHE = ReconcileCache()


_TENANT_FIELDS = (
    "tenant_id",
    "currency",
    "invoice",
    "status",
    "metered",
    "invoiced",
    "collected",
    "flags",
    "unexplained",
)


def _reconciliation_summary(
    ledger: Ledger, usage_root: LakeLocation, period: str, cache: ReconcileCache
) -> dict[str, Any]:
    """The period's reconciliation as the overview shows it; one that cannot run says why, in `error`."""
    try:
        recon = reconciliation_json(cache.get(ledger, usage_root, period))
    except BillingError as exc:  # the rest of the month still shows (stripe=None: no payments error can arise)
        return {
            "explained": False,
            "unexplained": [],
            "flags": [],
            "totals": {},
            "flagged": [],
            "tenants": [],
            "error": f"the reconciliation could not run: {exc}",
        }
    return {
        "explained": recon["explained"],
        "unexplained": recon["unexplained"],
        "flags": recon["flags"],
        "totals": recon["totals"],
        "flagged": recon["flagged"],
        "tenants": [{k: t[k] for k in _TENANT_FIELDS} for t in recon["tenants"]],
        "error": None,
    }


def overview(ledger: Ledger, usage_root: LakeLocation, period: str, cache: ReconcileCache = CACHE) -> dict[str, Any]:
    """The month at a glance (see the module docstring); bad input raises ReportError."""
    from billing.common.periods import parse_period

    try:
        parse_period(period)
    except PeriodError as exc:
        raise ReportError(str(exc), subject="period") from None
    with ledger.transaction() as session:
        invoices, rows = _invoices(session, period)
        stripe = _stripe(session, rows)
        close = _close(session, period)
        tenants = session.scalar(select(func.count()).select_from(Tenant)) or 0
    return {
        "period": period,
        "tenants": tenants,
        "invoices": invoices,
        "stripe": stripe,
        "close": close,
        "reconciliation": _reconciliation_summary(ledger, usage_root, period, cache),
    }
