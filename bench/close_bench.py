"""Month-close benchmarks: push 1,000 issued invoices to stripe-mock, and reconcile a period of
10 million usage records, each beside a same-run baseline that does only the unavoidable part.

Push: 1,000 tenants with an hour of one H100 each (half valley, half peak, with energy and 10 %
tax: five lines an invoice), rated and finalized before the clock starts. Timed: `push()` of the
period to a stripe-mock started here (customer, items, invoice, finalize, with wattmeter's
metadata look-ups before each create and a commit after each answered call). Baseline: the bare
stripe-python calls that create the same objects with the same parameters and idempotency keys
(customer, five items, invoice, finalize), with no look-up and no database, against the same
stripe-mock. Each side runs PUSH_RUNS times, alternately; the fastest run is the figure.

Reconcile: billing_bench's 10,022,400 records and its ledger (20 tenants on the demo card), with
the 6,960 daily leases the records name imported first, rated and finalized before the clock
starts. Timed: `reconcile(ledger, usage, period)` without Stripe, as run on 2 December (every
lease of November past). Baseline: billing_bench's DuckDB side, the grouped sums of allocated
GPU-ms and energy per tenant (by plan, model and peak/valley, and per lease) over the same
Parquet. Both take a few seconds, so each runs RECONCILE_RUNS times, alternately: the fastest
run of each side is the figure, the highest peak memory of each side its memory.

Each side runs in a fresh process, started through a small launcher so that its peak memory
(ru_maxrss) is its own and not that of the process running the benchmarks.

    python -m bench.close_bench [push|reconcile]...     # one or both, a table at the end
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.billing_bench import (
    CARD,
    DUCKDB_SIDE,
    LOAD_DIR,
    PERIOD,
    PERIOD_START_MS,
    TENANTS,
    WATTMETER_SIDE,
    _side,
    write_load,
)
from bench.results import BenchResult
from schemas.units import MS_PER_DAY

PUSH_TENANTS = 1_000
PUSH_RUNS = 2
PUSH_MINUTES = 60  # 05:30-06:30 UTC on a Monday: 30 valley + 30 peak minutes on the simple card

# Both push sides count the HTTP requests stripe-python sends (the same wrapper on each side).
COUNT_REQUESTS = """
import stripe._http_client as _http
_sent = [0]
_request = _http.RequestsClient.request
def _counted(self, *args, **kwargs):
    _sent[0] += 1
    return _request(self, *args, **kwargs)
_http.RequestsClient.request = _counted
"""

PUSH_SIDE = (
    COUNT_REQUESTS
    + """
import resource, sys, time, json
from billing.ledger.db import Ledger
from billing.payments.client import Stripe, StripeSettings
from billing.payments.stripe_sync import push
db, url, key = sys.argv[1], sys.argv[2], sys.argv[3]
ledger = Ledger(db)
stripe = Stripe(StripeSettings(key, url, retries=0, backoff_s=0.01))
began, cpu = time.perf_counter(), time.process_time()
report = push(ledger, stripe, "bench", period="2026-11")
elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
actions = {}
for outcome in report.outcomes:
    actions[outcome.action] = actions.get(outcome.action, 0) + 1
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "actions": actions, "requests": _sent[0],
                  "errors": [o.error for o in report.failed][:3],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)

BARE_SIDE = (
    COUNT_REQUESTS
    + """
import pickle, resource, sys, time, json
import stripe
from billing.payments import documents as docs
invoices, url, key = pickle.loads(open(sys.argv[1], "rb").read()), sys.argv[2], sys.argv[3]
client = stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0)
v1 = client.v1
began, cpu = time.perf_counter(), time.process_time()
for tenant_id, name, email, doc in invoices:
    customer = v1.customers.create(params=docs.customer_params(tenant_id, name, email),
                                   options={"idempotency_key": docs.customer_key(tenant_id)})
    for line in doc.lines:
        v1.invoice_items.create(params=docs.item_params(doc, line, customer.id),
                                options={"idempotency_key": docs.item_key(doc, line)})
    invoice = v1.invoices.create(params=docs.invoice_params(doc, customer.id),
                                 options={"idempotency_key": docs.invoice_key(doc)})
    v1.invoices.finalize_invoice(invoice.id, options={"idempotency_key": docs.finalize_key(doc)})
elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "invoices": len(invoices), "requests": _sent[0],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)


def _measured(code: str, *argv: str) -> dict[str, Any]:
    """billing_bench's `_side`: a fresh process printing one JSON line, its peak RSS its own (a launcher)."""
    result: dict[str, Any] = _side(code, *argv)
    return result


def prepare_push_ledger(folder: Path, tenants: int = PUSH_TENANTS) -> str:
    """A SQLite ledger under `folder` whose November is rated and finalized: one five-line invoice
    per tenant (about half a minute for 1,000 tenants); its URL."""
    from billing.invoicing.service import finalize_period, run_period
    from tests.support.billing_fixtures import HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, minutes

    usage = folder / "usage"
    names = [f"tenant-{n:04d}" for n in range(tenants)]
    rows = []
    start = NOV_1 + 24 * HOUR + 5 * HOUR + 30 * MINUTE  # Monday 2 November, 05:30 UTC
    for n, tenant_id in enumerate(names):
        rows += minutes(tenant_id, start, PUSH_MINUTES, gpu=f"GPU-{n:04d}", energy_mj=42_000_000)
    UsageWriter(usage).write(rows)
    url = f"sqlite:///{folder}/push.db"
    ledger = ledger_with(
        url, tenants={t: {"tax_jurisdiction": "XX", "contact_email": f"{t}@example.com"} for t in names}
    )
    run_period(ledger, usage, PERIOD, "bench")
    finalize_period(ledger, "bench", PERIOD)
    ledger.dispose()
    return url


def _bare_requests(url: str, path: Path) -> tuple[int, int]:
    """Write what the bare side sends (tenant, name, email, invoice document per issued invoice) to
    `path`; the number of invoices and of lines."""
    from sqlalchemy import select

    from billing.ledger.db import Ledger
    from billing.ledger.models import Invoice, Tenant
    from billing.payments.stripe_sync import invoice_doc

    ledger = Ledger(url)
    with ledger.transaction() as session:
        tenants = {t.tenant_id: t for t in session.scalars(select(Tenant))}
        invoices = session.scalars(
            select(Invoice).where(Invoice.period == PERIOD, Invoice.number.is_not(None)).order_by(Invoice.tenant_id)
        )
        work = [
            (i.tenant_id, tenants[i.tenant_id].name, tenants[i.tenant_id].contact_email, invoice_doc(i))
            for i in invoices
        ]
    ledger.dispose()
    path.write_bytes(pickle.dumps(work))
    return len(work), sum(len(doc.lines) for *_, doc in work)


def push_bench() -> list[BenchResult]:
    from deploy.local.stripe_peers import start_stripe_mock

    with tempfile.TemporaryDirectory(prefix="wattmeter-close-bench-") as tmp:
        began = time.monotonic()
        url = prepare_push_ledger(Path(tmp))
        invoices, lines = _bare_requests(url, Path(tmp) / "bare.pickle")
        print(
            f"close bench: {invoices:,} invoices ({lines:,} lines) issued in {time.monotonic() - began:.0f} s",
            flush=True,
        )
        prepared = Path(url.removeprefix("sqlite:///"))
        baselines: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        with start_stripe_mock() as mock:
            for n in range(PUSH_RUNS):  # alternately, each push on its own copy of the issued ledger
                baselines.append(_measured(BARE_SIDE, str(Path(tmp) / "bare.pickle"), mock.url, mock.api_key))
                copy = prepared.with_name(f"push-{n}.db")
                for suffix in ("", "-wal"):  # a closed SQLite database has no -wal; copied if there is one
                    if Path(f"{prepared}{suffix}").exists():
                        shutil.copyfile(f"{prepared}{suffix}", f"{copy}{suffix}")
                runs.append(_measured(PUSH_SIDE, f"sqlite:///{copy}", mock.url, mock.api_key))
    for ours in runs:
        pushed = int(ours["actions"].get("pushed", 0))
        if pushed != invoices:
            raise RuntimeError(f"push pushed {pushed} of {invoices} invoices: {ours}")
    baseline, ours = (min(sides, key=lambda side: side["seconds"]) for sides in (baselines, runs))
    peak_rss, baseline_rss = (max(side["peak_rss_mib"] for side in sides) for sides in (runs, baselines))
    return [
        BenchResult(
            name="stripe_push_1000_invoices_s",
            value=round(ours["seconds"], 3),
            unit=f"s to push {invoices:,} invoices ({lines:,} items) to stripe-mock: "
            f"{int(ours['requests']):,} requests, "
            f"{invoices / ours['seconds']:.0f} invoices/s, {ours['cpu_seconds']:.1f} s CPU in the pusher; "
            f"fastest of {PUSH_RUNS}",
            baseline=f"bare stripe-python: the same customer, item, invoice and finalize calls, same parameters and "
            f"keys, no look-ups or database ({int(baseline['requests']):,} requests, {baseline['cpu_seconds']:.1f} s "
            f"CPU), same stripe-mock, same run; fastest of {PUSH_RUNS}",
            baseline_value=round(baseline["seconds"], 3),
            target="within 2x of the bare calls (ratio <= 2)",
        ),
        BenchResult(
            name="stripe_push_1000_invoices_peak_rss",
            value=round(peak_rss, 1),
            unit=f"MiB peak RSS of the push process (highest of {PUSH_RUNS})",
            baseline="bare stripe-python calls process, peak RSS",
            baseline_value=round(baseline_rss, 1),
            target="reported",
        ),
    ]


RECONCILE_SIDE = """
import resource, sys, time, json
from pathlib import Path
from billing.ledger.db import Ledger
from billing.reconcile.service import reconcile
db, usage, period = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
ledger = Ledger(db)
began = time.perf_counter()
result = reconcile(ledger, usage, period, stripe=None, now_ms=int(sys.argv[4]))
elapsed = time.perf_counter() - began
print(json.dumps({"seconds": elapsed, "tenants": len(result.tenants), "unexplained": len(result.unexplained),
                  "flags": len(result.flags),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

RECONCILE_RUNS = 3
CLOSE_MS = 1_796_169_600_000  # 2026-12-02T00:00:00Z: the close runs after the month (its leases are all past)
RECONCILE_NAME = "reconcile_10m_usage_records_s"
RECONCILE_TARGET = "within 3x of DuckDB (ratio <= 3): it reads the Parquet for what is complete and what was consumed"
RECONCILE_BASELINE = (
    "DuckDB alone: the metered side, grouped sums of allocated GPU-ms and energy per tenant "
    "(plan, model, peak/valley; per lease) over the same files, same run"
)


def seed_leases(url: str, gpus: int | None = None) -> int:
    """billing_bench's tenants and the leases its usage records name (one per GPU and day, on the
    plan the records carry), so that the quantity leg has the ledger's leases to check; the
    number of leases. Done before billing_bench's rating, which takes the lease starts from here."""
    from bench.billing_bench import GPUS, MINUTES

    gpus = GPUS if gpus is None else gpus
    from billing.leases.importers import LeaseRow
    from billing.leases.offers import open_offer
    from billing.leases.service import import_leases
    from billing.ledger.db import Ledger
    from billing.ledger.store import upsert_tenant

    day_ms = MS_PER_DAY
    rows = [
        LeaseRow(
            f"tenant-{gpu % TENANTS}",
            f"GPU-{gpu}",
            PERIOD_START_MS + day * day_ms,
            PERIOD_START_MS + (day + 1) * day_ms,
            "valley" if gpu % 5 == 0 else "on_demand",
            f"lease-{gpu}-{day}",
        )
        for gpu in range(gpus)
        for day in range(MINUTES // 1440)
    ]
    ledger = Ledger(url)
    with ledger.transaction() as session:
        for t in range(TENANTS):  # as billing_bench's rating side makes them (it upserts them again)
            upsert_tenant(session, "bench", f"tenant-{t}", currency="USD", timezone="UTC", tax_jurisdiction="*")
        valley_gpus = sorted({row.gpu_uuid for row in rows if row.plan == "valley"})
        if valley_gpus:  # the valley plan is sold inside a capacity offer (billing.leases.offers)
            end = PERIOD_START_MS + (MINUTES // 1440 + 1) * day_ms
            open_offer(
                session, "bench-valley", start_ms=PERIOD_START_MS, end_ms=end, notice_ms=120_000, gpus=valley_gpus
            )
        import_leases(session, rows, "bench")
    ledger.dispose()
    return len(rows)


def _finalize(url: str) -> int:
    from billing.invoicing.service import finalize_period
    from billing.ledger.db import Ledger

    ledger = Ledger(url)
    issued = len(finalize_period(ledger, "bench", PERIOD))
    ledger.dispose()
    return issued


def reconcile_bench() -> list[BenchResult]:
    began = time.monotonic()
    records = write_load()
    with tempfile.TemporaryDirectory(prefix="wattmeter-close-bench-") as tmp:
        url = f"sqlite:///{tmp}/reconcile.db"
        leases = seed_leases(url)
        # billing_bench's ledger (tenants, card, contracts) and its rating of the 10 M records
        _side(WATTMETER_SIDE, url, str(LOAD_DIR), str(CARD), str(TENANTS), str(PERIOD_START_MS))
        issued = _finalize(url)
        print(
            f"close bench: {records:,} usage records on {leases:,} leases rated, {issued} invoices issued in "
            f"{time.monotonic() - began:.0f} s",
            flush=True,
        )
        baselines: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        try:
            for _ in range(RECONCILE_RUNS):
                baselines.append(_measured(DUCKDB_SIDE, str(LOAD_DIR)))
                runs.append(_measured(RECONCILE_SIDE, url, str(LOAD_DIR), PERIOD, str(CLOSE_MS)))
        except RuntimeError as exc:  # the reconciliation is missing or failed: say so in the results
            if len(baselines) == len(runs):  # it was DuckDB's side that failed
                raise
            last = [line for line in str(exc).splitlines() if line.strip()][-1:] or ["?"]
            baseline = min(baselines, key=lambda side: side["seconds"])
            return [
                BenchResult(
                    name=RECONCILE_NAME,
                    value=0.0,
                    unit=f"ERROR: reconcile() failed, no figure: {last[0][:300]}",
                    baseline=RECONCILE_BASELINE,
                    baseline_value=round(baseline["seconds"], 3),
                    target=RECONCILE_TARGET,
                )
            ]
    baseline, ours = (min(sides, key=lambda side: side["seconds"]) for sides in (baselines, runs))
    peak_rss, baseline_rss = (max(side["peak_rss_mib"] for side in sides) for sides in (runs, baselines))
    return [
        BenchResult(
            name=RECONCILE_NAME,
            value=round(ours["seconds"], 3),
            unit=f"s to reconcile {records:,} records on {leases:,} leases against {issued} issued invoices "
            f"(no Stripe): {ours['unexplained']} unexplained; fastest of {RECONCILE_RUNS}",
            baseline=RECONCILE_BASELINE + f"; fastest of {RECONCILE_RUNS}",
            baseline_value=round(baseline["seconds"], 3),
            target=RECONCILE_TARGET,
        ),
        BenchResult(
            name="reconcile_10m_usage_records_peak_rss",
            value=round(peak_rss, 1),
            unit=f"MiB peak RSS of the reconciling process (highest of {RECONCILE_RUNS})",
            baseline="DuckDB grouped sums process, peak RSS",
            baseline_value=round(baseline_rss, 1),
            target="reported",
        ),
    ]


BENCHES = {"push": push_bench, "reconcile": reconcile_bench}


def run(bootstrap: str | None = None, only: list[str] | None = None) -> list[BenchResult]:
    results: list[BenchResult] = []
    for name in only or list(BENCHES):
        results += BENCHES[name]()
    return results


if __name__ == "__main__":
    from bench.results import table

    chosen = sys.argv[1:]
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        print(f"usage: python -m bench.close_bench [{'|'.join(BENCHES)}]...", file=sys.stderr)
        sys.exit(2)
    figures = run(only=chosen or None)
    print(table(figures))
    print(json.dumps([f.__dict__ for f in figures], indent=2))
