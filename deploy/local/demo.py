"""`make demo`: the whole pipeline on a laptop, one simulated hour in about a minute, up to
issued invoices pushed to Stripe (a local stripe-mock) and a reconciliation.

broker (local KRaft) -> finance sets up tenants, rate cards and contracts -> the operator
imports the leases (wattmeter-billing leases import, published to gpu.leases through the
outbox) -> simulated agents -> Faust worker -> Parquet sink -> wattmeter-billing run, then
`close` (review, finalize, push to stripe-mock, reconcile; run twice: nothing twice), show.
Every billing step is the `wattmeter-billing` command a person would type.

The simulated hour is 05:30-06:30 New York time on the latest working day at least two
hours ago: it crosses the rate card's valley-to-peak boundary at 06:00 local, whatever the
season, and lies within the lease horizon of "now".
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from billing.pricing.ratecards import DEMO_CARD, RATECARDS_DIR, load_rate_card
from deploy.local.fleet import FleetPlan, demo_plan, publish_samples
from deploy.local.kafka_broker import BrokerUnavailable, start_broker
from deploy.local.pipeline import service_env, start_sink, start_worker, wait_for
from deploy.local.stripe_peers import StripePeer, launch_stripe_mock
from schemas.units import MS_PER_HOUR, MS_PER_MINUTE

COMMITTED_CARD = RATECARDS_DIR / "demo-committed.toml"
DEMO_TIMEZONE = "America/New_York"
# who rents what: acme and globex on the demo card, initech on a committed-spend card
DEMO_TENANTS = {
    "acme": ("Acme Research", "demo"),
    "globex": ("Globex Labs", "demo"),
    "initech": ("Initech AI", "demo-committed"),
}


def demo_start_ms(now_ms: int | None = None) -> int:
    """05:30 New York time on the latest working day (no weekend, no holiday) whose 06:30 is at
    least two hours before `now_ms`."""
    calendar = load_rate_card(DEMO_CARD).calendar
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    day: date = calendar.local_date(now)
    while True:
        start = calendar.local_ms(day, 5) + 30 * MS_PER_MINUTE
        if not calendar.is_weekend(day) and start + 60 * MS_PER_MINUTE <= now - 2 * MS_PER_HOUR:
            return start
        day -= timedelta(days=1)


def windows_written(usage_dir: Path, start_ms: int, end_ms: int, gpus: list[str]) -> int:
    """Distinct (GPU, window) pairs of `gpus` in the Parquet with windows starting in [start, end)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = [str(p) for p in usage_dir.glob("date=*/*.parquet")]
    if not files:
        return 0
    table = ds.dataset(files, format="parquet").to_table(
        columns=["gpu_uuid", "window_start_ms"],
        filter=(pc.field("window_start_ms") >= start_ms)
        & (pc.field("window_start_ms") < end_ms)
        & pc.field("gpu_uuid").isin(gpus),
    )
    return len(set(zip(table["gpu_uuid"].to_pylist(), table["window_start_ms"].to_pylist())))


DEMO_WEBHOOK_SECRET = "whsec_demo_initech"


class DemoReceiver:
    """initech's webhook endpoint, on loopback: it checks each notice's signature and keeps it."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from billing.market import webhooks

        events: list[dict[str, Any]] = []
        self.events = events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signature = self.headers.get(webhooks.SIGNATURE_HEADER, "")
                good = webhooks.verify(DEMO_WEBHOOK_SECRET, signature, body, int(time.time()))
                if good:
                    events.append(json.loads(body))
                self.send_response(200 if good else 400)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wattmeter"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stack_receiver(closing: list[Any]) -> DemoReceiver:
    receiver = DemoReceiver()
    closing.append(receiver.close)
    return receiver


def billing(*argv: str) -> None:
    """One `wattmeter-billing` command, echoed as a person would type it; a failure stops the demo."""
    from billing.cli import main as billing_main

    print(f"    $ wattmeter-billing {' '.join(argv)}", flush=True)
    code = billing_main(list(argv))
    if code != 0:
        raise SystemExit(f"demo: wattmeter-billing {argv[0]} failed with exit {code}")


def write_lease_file(plan: FleetPlan, path: Path) -> None:
    """The operator's scheduler export: one row per lease, times in ISO 8601. Cells go through
    `csv_cell` as in every CSV wattmeter writes; the demo's ids never start like a formula, so
    `leases import` reads back exactly the plan's values."""
    from schemas.csv_cells import csv_cell
    from schemas.units import ms_to_datetime

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lease_id", "tenant_id", "gpu_uuid", "start", "end", "plan"])
        for lease in plan.leases:
            end = ms_to_datetime(lease.end_ms).isoformat() if lease.end_ms is not None else ""
            start = ms_to_datetime(lease.start_ms).isoformat()
            cells = [lease.lease_id, lease.tenant_id, lease.gpu_uuid, start, end, lease.plan]
            writer.writerow([csv_cell(cell) for cell in cells])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where the Parquet, database and logs go")
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes (default 60)")
    parser.add_argument("--start-ms", type=int, help="simulated start (default: 05:30 New York, latest working day)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    usage_dir = out / "usage"
    database = f"sqlite:///{out}/billing.db"
    start_ms = args.start_ms if args.start_ms is not None else demo_start_ms()
    end_ms = start_ms + args.minutes * MS_PER_MINUTE
    began = time.monotonic()
    print("1/6 starting the Kafka broker (KRaft, loopback) ...", flush=True)
    try:
        broker = start_broker(Path(".wattmeter/demo-kafka"))
    except BrokerUnavailable as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    print(f"    broker at {broker.bootstrap} ({broker.mode})", flush=True)
    saved_env = {
        k: os.environ.get(k)
        for k in (
            "KAFKA_BOOTSTRAP_SERVERS",
            "WATTMETER_BILLING_DB",
            "WATTMETER_ACTOR",
            "WATTMETER_STRIPE_API_KEY",
            "WATTMETER_STRIPE_API_BASE",
        )
    }
    os.environ.update(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, WATTMETER_BILLING_DB=database, WATTMETER_ACTOR="demo")
    services = []
    peers: list[StripePeer] = []
    peers_closing: list[Any] = []
    try:
        from billing.common.periods import period_of

        period = period_of(start_ms, DEMO_TIMEZONE)
        print("2/6 finance: rate cards, tenants, contracts", flush=True)
        billing("ratecards", "load", str(DEMO_CARD))
        billing("ratecards", "load", str(COMMITTED_CARD))
        for tenant, (name, card) in DEMO_TENANTS.items():
            billing(
                "tenants",
                "add",
                tenant,
                "--name",
                name,
                "--currency",
                "USD",
                "--timezone",
                DEMO_TIMEZONE,
                "--tax-jurisdiction",
                "US-NY",
            )
            billing("contracts", "add", "--tenant", tenant, "--rate-card", card, "--from", "2026-01-01T05:00Z")
        plan = demo_plan(start_ms, args.minutes)
        lease_file = out / "leases.csv"
        write_lease_file(plan, lease_file)
        print(
            f"3/6 operator: {len(plan.leases)} leases imported and published to gpu.leases; simulating "
            f"{len(plan.gpu_uuids())} GPUs on {len(plan.nodes)} nodes for {args.minutes} minutes ...",
            flush=True,
        )
        valley = [lease for lease in plan.leases if lease.plan == "valley"]
        offered = ",".join(sorted({lease.gpu_uuid for lease in valley}))
        window = ("--start", str(start_ms), "--end", str(end_ms + 24 * MS_PER_HOUR))
        billing("offers", "open", "demo-valley", "--gpus", offered, *window, "--notice-s", "120")
        billing("leases", "import", str(lease_file))
        receiver = stack_receiver(peers_closing)
        billing("webhooks", "set", "--tenant", "initech", "--url", receiver.url, "--secret", DEMO_WEBHOOK_SECRET)
        taken = next(lease for lease in valley if lease.lease_id == "lease-initech-6")
        assert taken.end_ms is not None
        noticed = taken.start_ms + (taken.end_ms - taken.start_ms) // 4
        print("    the owner takes a valley GPU back for its own training, on the offer's 2 minutes' notice:")
        at = min(noticed + 120_000, taken.end_ms - 1000)
        billing("leases", "preempt", taken.lease_id, "--noticed-at", str(noticed), "--at", str(at))
        for event in receiver.events:
            data = event["data"]
            print(
                f"    initech's endpoint got {event['type']} {event['id']} (signature verified): lease "
                f"{data['lease_id']} ends {data['ends_at_ms']}, {data['notice_s']} s after the notice",
                flush=True,
            )
        sent = publish_samples(broker.bootstrap, plan)
        print(f"    {sent} node samples ({sent * plan.gpus_per_node} GPU-samples) sent to gpu.samples", flush=True)
        env = service_env(
            broker.bootstrap,
            f"wattmeter-demo-{uuid.uuid4().hex[:8]}",
            usage_dir,
            out / "state",
            WATTMETER_CHECK_FUTURE="0",
            WATTMETER_SINK_SECONDS="1",
        )
        print("4/6 running the Faust worker and the Parquet sink ...", flush=True)
        services = [start_worker(env, out / "logs" / "worker.log"), start_sink(env, out / "logs" / "sink.log")]
        expected = len(plan.gpu_uuids()) * args.minutes
        gpus = plan.gpu_uuids()
        wait_for(
            lambda: windows_written(usage_dir, start_ms, end_ms, gpus) >= expected,
            600,
            f"{expected} GPU-windows in Parquet",
            tuple(services),
        )
        print(f"    {expected} GPU-minutes rolled up and written", flush=True)
        for service in services:
            service.stop()
        print("    before the close, initech watches its month to date against a budget of its own:", flush=True)
        usage = ("--usage-dir", str(usage_dir))
        billing(
            "budgets", "set", "--tenant", "initech", "--owner", "tenant", "--amount", "30.00", "--thresholds", "100"
        )
        heard = len(receiver.events)
        billing("spend", "--tenant", "initech", "--period", period, "--refresh", *usage)
        billing("webhooks", "deliver")
        for event in receiver.events[heard:]:
            data = event["data"]
            print(
                f"    initech's endpoint got {event['type']} (signature verified): {data['threshold_percent']} % of "
                f"{data['budget_amount']} {data['currency']} reached, spend {data['spend']}",
                flush=True,
            )
        print(
            f"5/6 finance closes {period} against a local stripe-mock: rate, review, finalize, push, reconcile",
            flush=True,
        )
        billing("run", "--period", period, *usage)
        billing("run", "--period", period, *usage)  # again: nothing to do
        stripe_mock = launch_stripe_mock()
        peers.append(stripe_mock)
        os.environ.update(WATTMETER_STRIPE_API_KEY=stripe_mock.api_key, WATTMETER_STRIPE_API_BASE=stripe_mock.url)
        print(f"    stripe-mock (Stripe's OpenAPI, no state) at {stripe_mock.url}", flush=True)
        # stripe-mock answers every read with a fixture, so the reconciliation does not read it back
        billing(
            "close", "--period", period, "--yes", "--no-stripe-compare", "--report-dir", str(out / "reports"), *usage
        )
        billing("close", "--period", period, "--yes", "--no-stripe-compare", *usage)  # again: nothing twice
        billing("stripe", "status", "--period", period)
        print("6/6 the issued invoices:\n", flush=True)
        from billing.invoicing.service import list_invoices
        from billing.ledger.db import Ledger

        ledger = Ledger(database)
        with ledger.transaction() as session:
            numbers = [i.number for i in list_invoices(session, period, status="finalized") if i.number]
        ledger.dispose()
        for number in numbers:
            billing("invoices", "show", number)
            print()
        from billing.web.auth import create_key

        ledger = Ledger(database)
        with ledger.transaction() as session:  # keys for the portal over the demo's data (printed once, here)
            tenant_key = create_key(session, "demo", "tenant", "acme", "demo portal")
            finance_key = create_key(session, "demo", "finance", None, "demo finance")
            operator_key = create_key(session, "demo", "operator", None, "demo operator")
        ledger.dispose()
        print("    serve the portal and the API over the demo's data:")
        print(f"      wattmeter-billing serve --db {database} --usage-dir {usage_dir} --port 8400")
        print("      then open http://127.0.0.1:8400/login with one of these keys")
        print(f"      tenant acme:  {tenant_key}   (usage, invoices, statements)")
        print(f"      finance:      {finance_key}   (/finance: the month at a glance)")
        print(f"      operator:     {operator_key}   (/operator: the fleet yield report)")
        print(
            f"    the API: curl -H 'Authorization: Bearer {tenant_key}' "
            f"'http://127.0.0.1:8400/api/v1/usage?period={period}'  (OpenAPI at /api/v1/openapi.json)"
        )
        print(
            f"    a statement: wattmeter-billing statement --tenant acme --period {period} --db {database} --out {out}"
        )
        print(f"    the yield report: wattmeter-billing yield --period {period} --db {database}")
        print(f"    explain a line:  wattmeter-billing explain {numbers[0]} 0 --db {database} --usage-dir {usage_dir}")
        print(f"    Parquet: {usage_dir}/date=YYYY-MM-DD/*.parquet; billing database: {database}")
        print(f"    reconciliation: {out / 'reports'}/reconcile-{period}.html (and .csv)")
        print(f"    demo took {time.monotonic() - began:.0f} s", flush=True)
        return 0
    finally:
        for service in services:
            service.stop()
        for peer in peers:
            peer.stop()
        for closing in peers_closing:
            closing()
        broker.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


if __name__ == "__main__":
    sys.exit(main())
