"""The valley market's benchmarks (docs/market.md): how fast the owner takes an offer back and how
fast the notices reach the tenants, each beside the same work done without wattmeter's bookkeeping.

- `preempt_offer_leases_per_s`: one `preempt(offer_id=...)` of an offer of 512 sold leases (each
  ended as the owner, its notice recorded, a tenant event and a webhook delivery written, the
  outbox row), on SQLite; baseline: `end_lease` of the same 512 leases in one transaction (what
  ending them was before the market).
- `webhook_deliveries_per_s`: `deliver_due` of 1,000 pending notices to a receiver on loopback
  (claim, sign, POST, record); baseline: the same signed bodies POSTed by the same HTTP client
  with no ledger.
"""

from __future__ import annotations

import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.results import BenchResult

LEASES = 512
EVENTS = 1000
T0 = 1_793_577_600_000  # 2026-11-02T00:00:00Z
HOUR = 3_600_000


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _ledger(folder: Path, name: str):  # type: ignore[no-untyped-def]
    from billing.leases import offers
    from billing.leases.service import open_lease
    from billing.ledger.db import Ledger
    from billing.ledger.store import upsert_tenant

    ledger = Ledger(f"sqlite:///{folder / name}.db")
    gpus = [f"GPU-{i:04d}" for i in range(LEASES)]
    with ledger.transaction() as session:
        for t in range(8):
            upsert_tenant(session, "bench", f"tenant-{t}")
        offers.open_offer(session, "bench", start_ms=T0, end_ms=T0 + 60 * HOUR, notice_ms=120_000, gpus=gpus)
        for i, gpu in enumerate(gpus):
            open_lease(session, f"tenant-{i % 8}", gpu, T0, plan="valley", lease_id=f"L-{i}", actor="bench")
    return ledger


def _preemption(folder: Path) -> BenchResult:
    from billing.leases.service import end_lease
    from billing.market.preemption import preempt

    ledger = _ledger(folder, "preempt")
    began = time.perf_counter()
    with ledger.transaction() as session:
        done = preempt(session, offer_id="bench", noticed_ms=T0 + 10 * HOUR, actor="bench")
    preempting = time.perf_counter() - began
    assert len(done) == LEASES
    ledger.dispose()
    plain = _ledger(folder, "end")
    began = time.perf_counter()
    with plain.transaction() as session:
        for i in range(LEASES):
            end_lease(session, f"L-{i}", T0 + 10 * HOUR + 120_000, actor="bench")
    ending = time.perf_counter() - began
    plain.dispose()
    return BenchResult(
        "preempt_offer_leases_per_s",
        round(LEASES / preempting, 1),
        "leases/s",
        f"end_lease of the same {LEASES} leases in one transaction (no notice, event or delivery)",
        round(LEASES / ending, 1),
        f"an offer of {LEASES} GPUs taken back in well under its 2-minute notice (> 100 leases/s)",
    )


def _deliveries(folder: Path) -> BenchResult:
    import httpx

    from billing.ledger.db import Ledger, now_ms
    from billing.ledger.store import upsert_tenant
    from billing.market import webhooks
    from billing.market.notices import PREEMPTION_NOTICE, event_bytes, event_id, record_event

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    ledger = Ledger(f"sqlite:///{folder / 'deliver'}.db")
    with ledger.transaction() as session:
        upsert_tenant(session, "bench", "acme")
        webhooks.set_endpoint(session, "acme", url, secret="whsec_bench")
        bodies = []
        for i in range(EVENTS):
            event = event_id(PREEMPTION_NOTICE, f"L-{i}", i)
            payload = {"lease_id": f"L-{i}", "ends_at_ms": T0 + i}
            record_event(session, PREEMPTION_NOTICE, "acme", f"L-{i}", payload, event, now_ms())
            bodies.append(event_bytes({"id": event, "data": payload}))
    try:
        with httpx.Client(timeout=10) as client:
            began = time.perf_counter()
            delivered = 0
            while delivered < EVENTS:
                sent, failed = webhooks.deliver_due(ledger, client=client, limit=200)
                assert failed == 0
                delivered += sent
            delivering = time.perf_counter() - began
            began = time.perf_counter()
            for body in bodies:
                stamp = int(time.time())
                headers = {webhooks.SIGNATURE_HEADER: webhooks.sign("whsec_bench", stamp, body)}
                client.post(url, content=body, headers=headers).raise_for_status()
            posting = time.perf_counter() - began
    finally:
        server.shutdown()
        server.server_close()
        ledger.dispose()
    return BenchResult(
        "webhook_deliveries_per_s",
        round(EVENTS / delivering, 1),
        "deliveries/s",
        f"the same {EVENTS} signed bodies POSTed by the same client, no ledger",
        round(EVENTS / posting, 1),
        "a preemption of 512 GPUs notified within its 2-minute notice (> 10 deliveries/s per deliverer)",
    )


def run() -> list[BenchResult]:
    with tempfile.TemporaryDirectory(prefix="wattmeter-market-bench-") as work:
        return [_preemption(Path(work)), _deliveries(Path(work))]


if __name__ == "__main__":
    from bench.results import table

    print(table(run()))
