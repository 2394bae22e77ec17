"""API benchmark: a tenant's month over HTTP with a year of hourly history for 1,000 GPUs, beside
DuckDB answering the same question directly over a Parquet of the same hourly rows.

The load: 1,000 GPUs x 8,760 hours (2025-12-01 to 2026-12-01 UTC) = 8,760,000 rows of `usage_hourly`
in a SQLite ledger, as the rollup writes them (a month at a time, ordered by hour, tenant, GPU).
900 GPUs are leased to 20 tenants of unequal size (10 to 86 GPUs; five time zones; the demo's New
York rate card with its holidays), 100 are idle (tenant ""). Each tenant has its November 2026
invoice, rated from those rows by the real rater, so every line has real segments. Built once
(about a minute) and cached under .wattmeter/bench-api/, with the same rows as one Parquet file
sorted by hour.

Measured, in the same run, over a random tenant each time:
- `GET /api/v1/usage?period=2026-11` (usage by local day, peak/valley split) and
  `GET /api/v1/invoices/{number}` (lines and the usage behind each, per GPU): HTTP/1.1 keep-alive
  requests with the tenant's key to `wattmeter-billing serve` (uvicorn, its own process);
- DuckDB over the Parquet: the same grouped sums (the same day/period and segment pieces).
Target: p99 < 100 ms.

    python -m bench.api_bench            # prints the table; `make bench` runs it with the rest
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.results import BenchResult, table
from schemas.units import MS_PER_HOUR

ROOT = Path(__file__).resolve().parents[1]
LOAD_DIR = ROOT / ".wattmeter" / "bench-api"
DB_PATH = LOAD_DIR / "billing.db"
PARQUET = LOAD_DIR / "hourly.parquet"
MARKER = LOAD_DIR / "_complete.json"
CARD = ROOT / "billing" / "ratecards" / "demo.toml"
LOAD_VERSION = 1

YEAR_START_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z
HOURS = 8_760
HOUR_MS = MS_PER_HOUR
GPUS = 1_000
IDLE_GPUS = 100
TENANTS = 20
PERIOD = "2026-11"
MODELS = ("H100", "A100", "L40S")
ZONES = ("America/New_York", "Europe/Berlin", "UTC", "Asia/Tokyo", "America/Los_Angeles")
WARMUP = 20
REQUESTS = 300

# One expression for both engines: the same rows in SQLite and in the Parquet.
ROW_SQL = """
    SELECT o.tenant_id AS tenant_id, o.gpu_uuid AS gpu_uuid, o.model AS model, o.plan AS plan,
           {start} + h.i * {hour} AS hour_start_ms,
           CASE WHEN o.tenant_id = '' THEN 0 ELSE {hour} END AS allocated_gpu_ms,
           CASE WHEN o.tenant_id = '' THEN 0 ELSE (o.g * 7919 + h.i * 104729) % {busy_mod} END AS busy_gpu_ms,
           (300 + (o.g * 31 + h.i * 17) % 400) * 3600000 AS energy_mj,
           60 AS records
    FROM {hours} CROSS JOIN owners o
    WHERE h.i >= {lo} AND h.i < {hi}
    ORDER BY h.i, o.tenant_id, o.gpu_uuid, o.plan
"""


def _owners() -> list[tuple[int, str, str, str, str]]:
    """(g, tenant_id, gpu_uuid, model, plan): GPUs 0..899 leased in blocks of unequal size, the rest idle."""
    weights = [t + 1 for t in range(TENANTS)]
    leased = GPUS - IDLE_GPUS
    sizes = [leased * w // sum(weights) for w in weights]
    sizes[-1] += leased - sum(sizes)
    out = []
    g = 0
    for tenant, size in enumerate(sizes):
        for _ in range(size):
            plan = "valley" if g % 5 == 0 else "on_demand"
            out.append((g, f"tenant-{tenant:02d}", f"GPU-{g:04d}", MODELS[g % len(MODELS)], plan))
            g += 1
    while g < GPUS:
        out.append((g, "", f"GPU-{g:04d}", MODELS[g % len(MODELS)], "on_demand"))
        g += 1
    return out


def _row_sql(hours: str, lo: int, hi: int) -> str:
    return ROW_SQL.format(start=YEAR_START_MS, hour=HOUR_MS, busy_mod=HOUR_MS + 1, hours=hours, lo=lo, hi=hi)


def _month_edges() -> list[int]:
    """Hour indexes where each UTC month of the year starts (the rollup writes a period at a time)."""
    from datetime import datetime, timezone

    edges = []
    for month in range(13):
        year, m = (2025, 12) if month == 0 else (2026, month)
        start = int(datetime(year, m, 1, tzinfo=timezone.utc).timestamp() * 1000)
        edges.append((start - YEAR_START_MS) // HOUR_MS)
    return edges


def _seed_sqlite(owners: list[tuple[int, str, str, str, str]]) -> None:
    from billing.ledger.db import Ledger

    Ledger(f"sqlite:///{DB_PATH}").dispose()  # the schema, by the migrations
    con = sqlite3.connect(DB_PATH, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1000000")
    con.execute("CREATE TEMP TABLE owners(g INTEGER, tenant_id TEXT, gpu_uuid TEXT, model TEXT, plan TEXT)")
    con.executemany("INSERT INTO owners VALUES (?, ?, ?, ?, ?)", owners)
    con.execute("CREATE TEMP TABLE hours(i INTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO hours VALUES (?)", [(i,) for i in range(HOURS)])
    columns = "tenant_id, gpu_uuid, model, plan, hour_start_ms, allocated_gpu_ms, busy_gpu_ms, energy_mj, records"
    edges = _month_edges()
    for lo, hi in zip(edges, edges[1:]):
        con.execute("BEGIN")
        con.execute(f"INSERT INTO usage_hourly ({columns}) {_row_sql('hours h', lo, hi)}")
        con.execute("COMMIT")
    con.execute("ANALYZE")
    con.close()


def _write_parquet(owners: list[tuple[int, str, str, str, str]]) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE owners(g BIGINT, tenant_id VARCHAR, gpu_uuid VARCHAR, model VARCHAR, plan VARCHAR)")
    con.executemany("INSERT INTO owners VALUES (?, ?, ?, ?, ?)", owners)
    select = _row_sql("range(0, 8760) h(i)", 0, HOURS)
    con.execute(f"COPY ({select}) TO '{PARQUET}' (FORMAT parquet, COMPRESSION zstd)")
    con.close()


def _clear_ledger_facts() -> None:
    """Remove what `_ledger_facts` wrote (an earlier run stopped half way), keeping the hourly rows."""
    con = sqlite3.connect(DB_PATH, isolation_level=None)
    con.execute("PRAGMA foreign_keys=OFF")
    for table_name in ("invoice_lines", "invoices", "api_keys", "contracts", "tenants", "rate_cards"):
        con.execute(f"DELETE FROM {table_name}")
    con.close()


def _ledger_facts(owners: list[tuple[int, str, str, str, str]]) -> dict[str, str]:
    """Tenants, the card and contracts, each tenant's November invoice (rated from the hourly rows by
    the real rater), and a key per tenant; returns {tenant: key}."""
    from sqlalchemy import text

    from billing.common.periods import period_bounds
    from billing.ledger.db import Ledger
    from billing.ledger.models import Invoice, InvoiceLineRow
    from billing.ledger.store import add_contract, card_spans, store_rate_card, upsert_tenant
    from billing.pricing.ratecards import parse_rate_card
    from billing.pricing.rating import UsageQuantity, rate_tenant
    from billing.pricing.segments import pricing_segments
    from billing.web.auth import create_key

    card = parse_rate_card(CARD.read_text(), str(CARD))
    ledger = Ledger(f"sqlite:///{DB_PATH}")
    keys: dict[str, str] = {}
    tenants = sorted({o[1] for o in owners if o[1]})
    with ledger.transaction() as session:
        store_rate_card(session, "bench", card)
        for index, tenant in enumerate(tenants):
            upsert_tenant(
                session,
                "bench",
                tenant,
                name=f"Bench tenant {index}",
                timezone=ZONES[index % len(ZONES)],
                tax_jurisdiction="US-NY",
            )
            add_contract(session, "bench", tenant, card.name, card.effective_from_ms)
            keys[tenant] = create_key(session, "bench", "tenant", tenant)
    for number, tenant in enumerate(tenants, start=1):
        with ledger.transaction() as session:
            zone = session.execute(text("SELECT timezone FROM tenants WHERE tenant_id = :t"), {"t": tenant}).scalar()
            start, end = period_bounds(PERIOD, str(zone))
            spans = card_spans(session, tenant, start, end)
            segments = pricing_segments(spans, start, end)
            starts = [s.start_ms for s in segments]
            rows = session.execute(
                text(
                    "SELECT plan, model, hour_start_ms, allocated_gpu_ms, busy_gpu_ms, energy_mj, records "
                    "FROM usage_hourly WHERE tenant_id = :t AND hour_start_ms >= :s AND hour_start_ms < :e"
                ),
                {"t": tenant, "s": start, "e": end},
            ).all()
            import bisect

            usage = [
                UsageQuantity(tenant, r[0], r[1], starts[bisect.bisect_right(starts, r[2]) - 1], r[3], r[4], r[5], r[6])
                for r in rows
            ]
            rated = rate_tenant(
                tenant_id=tenant,
                usage=usage,
                leases=[],
                segments=segments,
                spans=spans,
                tax_jurisdiction="US-NY",
                service_start_ms=start,
                service_end_ms=end,
            )
            invoice = Invoice(
                tenant_id=tenant,
                period=PERIOD,
                period_start_ms=start,
                period_end_ms=end,
                status="draft",
                currency=rated.currency,
                subtotal=rated.subtotal,
                tax=rated.tax,
                total=rated.total,
                credits_applied=rated.credits_applied,
                amount_due=rated.amount_due,
                content_hash="bench",
                usage_cutoff={},
                rated_ms=0,
                finalized_ms=0,
            )
            for position, line in enumerate(rated.lines):
                measure = {"ms": "allocated_gpu_ms", "mJ": "energy_mj"}.get(line.base_unit, "")
                query = {
                    "tenant_id": tenant,
                    "measure": measure,
                    "plan": line.plan or None,
                    "model": line.model or None,
                    "segments": [list(s) for s in line.segments],
                    "ranges": [],
                    "service_start_ms": start,
                    "service_end_ms": end,
                }
                invoice.lines.append(
                    InvoiceLineRow(
                        position=position,
                        kind=line.kind,
                        description=line.description,
                        service_start_ms=line.service_start_ms,
                        service_end_ms=line.service_end_ms,
                        service_period=PERIOD,
                        correction=False,
                        card_name=line.card_name,
                        card_version=line.card_version,
                        plan=line.plan,
                        model=line.model,
                        tou_period=line.tou_period,
                        tier=line.tier,
                        quantity_base=line.quantity_base,
                        base_unit=line.base_unit,
                        quantity=line.quantity,
                        unit=line.unit,
                        unit_price=line.unit_price,
                        amount=line.amount,
                        usage_query=query,
                    )
                )
            session.add(invoice)
            session.flush()
            invoice.status, invoice.number = "finalized", f"WM-B{number:05d}"  # issued as finalize() does
    ledger.dispose()
    return keys


def build_load() -> dict[str, Any]:
    """Build the cached load if it is missing or stale; returns its facts (tenants' keys, seconds taken)."""
    if MARKER.exists():
        facts: dict[str, Any] = json.loads(MARKER.read_text())
        if facts.get("version") == LOAD_VERSION and DB_PATH.exists() and PARQUET.exists():
            return facts
    LOAD_DIR.mkdir(parents=True, exist_ok=True)
    MARKER.unlink(missing_ok=True)
    rows_marker = LOAD_DIR / "_rows.json"
    began = time.perf_counter()
    owners = _owners()
    if not (rows_marker.exists() and json.loads(rows_marker.read_text()).get("version") == LOAD_VERSION):
        for path in (DB_PATH, PARQUET, DB_PATH.with_name("billing.db-wal"), DB_PATH.with_name("billing.db-shm")):
            path.unlink(missing_ok=True)
        _seed_sqlite(owners)
        _write_parquet(owners)
        rows_marker.write_text(json.dumps({"version": LOAD_VERSION}))
    _clear_ledger_facts()
    keys = _ledger_facts(owners)
    facts = {
        "version": LOAD_VERSION,
        "rows": GPUS * HOURS,
        "keys": keys,
        "seconds": round(time.perf_counter() - began, 1),
    }
    MARKER.write_text(json.dumps(facts, indent=2))
    return facts


# -- measuring ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_server(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WATTMETER_BILLING_DB": f"sqlite:///{DB_PATH}", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "billing.cli", "serve", "--port", str(port), "--usage-dir", str(LOAD_DIR / "usage")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the API server exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the API server did not start within 60 s")


def _measure_spend(keys: dict[str, str], tenant: str, windows: dict[str, Any]) -> tuple[list[float], list[float]]:
    """GET /spend of one tenant (the largest), REQUESTS times; beside it, DuckDB answering the same
    question over the Parquet: the month's sums per (segment piece, plan, model) that price it."""
    import duckdb
    import httpx

    port = _free_port()
    server = _start_server(port)
    api: list[float] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30) as client:
            headers = {"Authorization": f"Bearer {keys[tenant]}"}
            for round_ in range(WARMUP + REQUESTS):
                began = time.perf_counter()
                response = client.get("/spend", params={"period": PERIOD}, headers=headers)
                elapsed = (time.perf_counter() - began) * 1000
                if response.status_code != 200 or not response.json()["lines"]:
                    raise RuntimeError(f"/spend: {response.status_code} {response.text[:300]}")
                if round_ >= WARMUP:
                    api.append(elapsed)
    finally:
        server.terminate()
        server.wait(10)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW usage_hourly AS SELECT * FROM read_parquet('{PARQUET}')")
    window = windows[tenant]
    duck: list[float] = []
    for round_ in range(WARMUP + REQUESTS):
        began = time.perf_counter()
        con.execute(
            "SELECT piece, plan, model, sum(allocated_gpu_ms), sum(energy_mj) "
            f"FROM (SELECT {window['invoice_case']} AS piece, plan, model, allocated_gpu_ms, energy_mj "
            "FROM usage_hourly WHERE tenant_id = ? AND hour_start_ms >= ? AND hour_start_ms < ?) "
            "GROUP BY piece, plan, model",
            [tenant, window["start"], window["end"]],
        ).fetchall()
        if round_ >= WARMUP:
            duck.append((time.perf_counter() - began) * 1000)
    con.close()
    return api, duck


def _measure_api(keys: dict[str, str], invoices: dict[str, str]) -> dict[str, list[float]]:
    import httpx

    port = _free_port()
    server = _start_server(port)
    rng = random.Random(11)
    tenants = sorted(keys)
    timings: dict[str, list[float]] = {"usage": [], "invoice": []}
    totals: dict[str, int] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30) as client:
            for round_ in range(WARMUP + REQUESTS):
                tenant = rng.choice(tenants)
                headers = {"Authorization": f"Bearer {keys[tenant]}"}
                for name, path, params in (
                    ("usage", "/usage", {"period": PERIOD}),
                    ("invoice", f"/invoices/{invoices[tenant]}", None),
                ):
                    began = time.perf_counter()
                    response = client.get(path, params=params, headers=headers)
                    elapsed = (time.perf_counter() - began) * 1000
                    if response.status_code != 200:
                        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
                    if round_ >= WARMUP:
                        timings[name].append(elapsed)
                    if name == "usage":
                        totals[tenant] = response.json()["total"]["allocated_gpu_ms"]
    finally:
        server.terminate()
        server.wait(10)
    timings["_totals"] = [float(totals[t]) for t in sorted(totals)]
    return timings


def _measure_duckdb(keys: dict[str, str], windows: dict[str, Any]) -> dict[str, list[float]]:
    """The same questions straight over the Parquet: the month's sums per (day, period) piece, and per
    (GPU, model, plan, segment) piece for the invoice, with the same piece boundaries."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"CREATE VIEW usage_hourly AS SELECT * FROM read_parquet('{PARQUET}')")
    rng = random.Random(11)
    tenants = sorted(keys)
    timings: dict[str, list[float]] = {"usage": [], "invoice": []}
    totals: dict[str, int] = {}
    for round_ in range(WARMUP + REQUESTS):
        tenant = rng.choice(tenants)
        window = windows[tenant]
        for name, keys_sql, case in (
            ("usage", "", window["usage_case"]),
            ("invoice", ", gpu_uuid, model, plan", window["invoice_case"]),
        ):
            began = time.perf_counter()
            rows = con.execute(
                f"SELECT piece{keys_sql}, sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(energy_mj), sum(records) "
                f"FROM (SELECT {case} AS piece{keys_sql}, allocated_gpu_ms, busy_gpu_ms, energy_mj, records "
                "FROM usage_hourly WHERE tenant_id = ? AND hour_start_ms >= ? AND hour_start_ms < ?) "
                f"GROUP BY piece{keys_sql}",
                [tenant, window["start"], window["end"]],
            ).fetchall()
            elapsed = (time.perf_counter() - began) * 1000
            if round_ >= WARMUP:
                timings[name].append(elapsed)
            if name == "usage":
                totals[tenant] = sum(int(r[1]) for r in rows)
    con.close()
    timings["_totals"] = [float(totals[t]) for t in sorted(totals)]
    return timings


def _windows(keys: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Per tenant: its month, the piece CASEs the API builds (day x period; invoice segments), its invoice."""
    from sqlalchemy import select

    from billing.ledger.db import Ledger
    from billing.ledger.models import Invoice
    from billing.readmodel import queries

    ledger = Ledger(f"sqlite:///{DB_PATH}")
    out: dict[str, Any] = {}
    invoices: dict[str, str] = {}
    with ledger.transaction() as session:
        for tenant in keys:
            start, end = queries.period_window(session, tenant, PERIOD)
            zone = queries.get_tenant(session, tenant).timezone
            tou = queries.tou_pieces(session, tenant, start, end)
            days = queries._local_days(ZoneInfo(zone), start, end)
            usage_bounds = queries._boundaries(
                (m for m, _ in days), (lo for lo, _, _ in tou), start_ms=start, end_ms=end
            )
            invoice = session.scalar(select(Invoice).where(Invoice.tenant_id == tenant, Invoice.period == PERIOD))
            assert invoice is not None
            invoices[tenant] = str(invoice.number)
            cuts = [x for line in invoice.lines for seg in (line.usage_query.get("segments") or []) for x in seg]
            invoice_bounds = queries._boundaries(cuts, start_ms=start, end_ms=end)
            out[tenant] = {
                "start": start,
                "end": end,
                "usage_case": queries._bucket_case("hour_start_ms", usage_bounds),
                "invoice_case": queries._bucket_case("hour_start_ms", invoice_bounds),
            }
    ledger.dispose()
    return out, invoices


def run() -> list[BenchResult]:
    facts = build_load()
    keys: dict[str, str] = facts["keys"]
    windows, invoices = _windows(keys)
    api = _measure_api(keys, invoices)
    duck = _measure_duckdb(keys, windows)
    if api["_totals"] != duck["_totals"]:
        raise RuntimeError("the API's month totals differ from DuckDB's over the Parquet")
    target = "p99 < 100 ms"
    load = f"tenant month, {facts['rows'] / 1e6:.2f} M hourly rows (1,000 GPUs x 1 year), {REQUESTS} requests"
    results = []
    for name, label in (("usage", "usage by day"), ("invoice", "invoice detail")):
        for q, tag in ((0.50, "p50"), (0.99, "p99")):
            results.append(
                BenchResult(
                    name=f"api {label} {tag} ({load})",
                    value=round(percentile(api[name], q), 2),
                    unit="ms",
                    baseline=f"DuckDB over the same rows in Parquet, same question, {tag}",
                    baseline_value=round(percentile(duck[name], q), 2),
                    target=target if tag == "p99" else "",
                )
            )
    totals = dict(zip(sorted(keys), api["_totals"]))
    largest = max(totals, key=lambda t: (totals[t], t))
    spend, spend_duck = _measure_spend(keys, largest, windows)
    results.append(
        BenchResult(
            name="api_spend_p99_ms",
            value=round(percentile(spend, 0.99), 2),
            unit=f"ms (GET /api/v1/spend, the largest tenant: {totals[largest] / 3.6e6:,.0f} GPU-hours in {PERIOD})",
            baseline="DuckDB over the same rows in Parquet: the month's sums per segment piece, plan and model, p99",
            baseline_value=round(percentile(spend_duck, 0.99), 2),
            target="p99 < 100 ms",
        )
    )
    return results


def main() -> int:
    began = time.perf_counter()
    results = run()
    print(table(results))
    print(f"\n{time.perf_counter() - began:.0f} s (load cached under {LOAD_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
