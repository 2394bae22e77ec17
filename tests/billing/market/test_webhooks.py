"""The signed webhook deliverer against a real HTTP receiver on loopback that fails, times out
(after it has processed the event) and is sent an event twice: every event ends delivered, the
receiver processes each id once, nothing is lost, and a delivery that keeps failing stays visible."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from billing.ledger import models
from billing.ledger.db import Ledger, now_ms
from billing.market import webhooks
from billing.market.notices import PREEMPTION_NOTICE, event_bytes, event_id, record_event
from tests.billing.leases.test_leases import add_tenant

ROOT = Path(__file__).resolve().parents[3]
SECRET = "whsec_receiver"
FAR = 10**15  # an attempt instant past every backoff


class Receiver:
    """A tenant's endpoint: verifies the signature, dedupes by event id, and misbehaves on cue."""

    def __init__(self) -> None:
        self.script: list[str] = []  # per request, in order: "fail", "slow" or "ok" (then "ok")
        self.requests: list[str] = []
        self.processed: Counter[str] = Counter()
        self.bad_signatures = 0
        self.lock = threading.Lock()

    def handle(self, event: str, signature: str, body: bytes) -> tuple[int, float]:
        with self.lock:
            self.requests.append(event)
            cue = self.script.pop(0) if self.script else "ok"
            if not webhooks.verify(SECRET, signature, body, int(time.time())):
                self.bad_signatures += 1
                return 400, 0.0
            if json.loads(body)["id"] != event:
                return 400, 0.0
            if cue == "fail":
                return 500, 0.0
            if event not in self.processed:  # the receiver's own idempotency: process an id once
                self.processed[event] += 1
            return 200, (1.5 if cue == "slow" else 0.0)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, delay = state.handle(
                self.headers[webhooks.EVENT_ID_HEADER], self.headers[webhooks.SIGNATURE_HEADER], body
            )
            time.sleep(delay)  # a slow answer: the event is processed, the acknowledgement is late
            try:
                self.send_response(status)
                self.end_headers()
            except OSError:
                pass  # the deliverer gave up waiting

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks/wattmeter"
    server.shutdown()
    server.server_close()


@pytest.fixture
def ledger(billing_db_url: str) -> Iterator[Ledger]:
    ledger = Ledger(billing_db_url)
    with ledger.transaction() as session:
        add_tenant(session, "acme")
    yield ledger
    ledger.dispose()


def record(ledger: Ledger, n: int) -> list[str]:
    ids = []
    with ledger.transaction() as session:
        for i in range(n):
            event = event_id(PREEMPTION_NOTICE, f"lease-{i}", 1000 + i)
            assert record_event(session, PREEMPTION_NOTICE, "acme", f"lease-{i}", {"i": i}, event, now_ms())
            assert not record_event(session, PREEMPTION_NOTICE, "acme", f"lease-{i}", {"i": i}, event, now_ms())
            ids.append(event)
    return ids


def states(ledger: Ledger) -> dict[str, tuple[str, int]]:
    with ledger.transaction() as session:
        return {d.event_id: (d.state, d.attempts) for d in webhooks.list_deliveries(session, "acme")}


def test_sign_and_verify_follow_stripes_scheme() -> None:
    body = b'{"id":"evt_1"}'
    header = webhooks.sign("whsec_x", 1_800_000_000, body)
    assert header.startswith("t=1800000000,v1=") and len(header.split("v1=")[1]) == 64
    assert webhooks.verify("whsec_x", header, body, 1_800_000_100)
    assert not webhooks.verify("whsec_x", header, body + b" ", 1_800_000_100)  # body changed
    assert not webhooks.verify("whsec_y", header, body, 1_800_000_100)  # another secret
    assert not webhooks.verify("whsec_x", header, body, 1_800_000_301)  # replayed too late
    assert not webhooks.verify("whsec_x", "v1=abc", body, 1_800_000_000)  # no timestamp
    assert [webhooks.backoff_ms(n) for n in (1, 2, 3, 13)] == [1000, 2000, 4000, 3_600_000]


def test_a_failing_slow_and_duplicate_receiver_gets_each_event_once(
    ledger: Ledger, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    with ledger.transaction() as session:
        webhooks.set_endpoint(session, "acme", url, secret=SECRET)
    ids = record(ledger, 3)
    # the first sent: an error, then acknowledged; the second: processed but answered too late, so
    # sent again (the receiver sees it twice and processes it once); the third: acknowledged at once
    state.script = ["fail", "slow", "ok"]
    assert webhooks.deliver_due(ledger, at_ms=FAR, timeout_s=0.5) == (1, 2)
    failed, slow, acked = state.requests  # the order the deliverer sent them in
    assert sorted(state.requests) == sorted(ids)
    assert states(ledger) == {failed: ("pending", 1), slow: ("pending", 1), acked: ("delivered", 1)}
    assert webhooks.deliver_due(ledger, at_ms=now_ms()) == (0, 0)  # the failed ones wait out their backoff
    assert webhooks.deliver_due(ledger, at_ms=FAR, timeout_s=0.5) == (2, 0)
    assert states(ledger) == {failed: ("delivered", 2), slow: ("delivered", 2), acked: ("delivered", 1)}
    assert webhooks.deliver_due(ledger, at_ms=FAR) == (0, 0)  # an acknowledged event is never sent again
    assert state.processed == Counter(ids)  # each once
    assert Counter(state.requests) == Counter({failed: 2, slow: 2, acked: 1})
    assert state.bad_signatures == 0


def test_a_delivery_that_keeps_failing_stays_visible_until_retried(
    ledger: Ledger, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    with ledger.transaction() as session:
        webhooks.set_endpoint(session, "acme", url, secret=SECRET)
    (event,) = record(ledger, 1)
    state.script = ["fail"] * 3
    for _ in range(3):
        assert webhooks.deliver_due(ledger, at_ms=FAR, max_attempts=3) == (0, 1)
    with ledger.transaction() as session:
        (failed,) = webhooks.list_deliveries(session, state=webhooks.FAILED)
    assert (failed.event_id, failed.attempts, failed.last_status, failed.last_error) == (event, 3, 500, "HTTP 500")
    assert webhooks.deliver_due(ledger, at_ms=FAR) == (0, 0)  # failed: not sent until retried
    with ledger.transaction() as session:
        assert webhooks.retry_failed(session) == 1
    assert webhooks.deliver_due(ledger, at_ms=FAR) == (1, 0)
    assert state.processed == Counter([event])


def test_a_refused_connection_counts_an_attempt_and_loses_nothing(ledger: Ledger) -> None:
    with ledger.transaction() as session:
        webhooks.set_endpoint(session, "acme", "http://127.0.0.1:9/closed", secret=SECRET)
    (event,) = record(ledger, 1)
    assert webhooks.deliver_due(ledger, at_ms=FAR, timeout_s=0.5) == (0, 1)
    with ledger.transaction() as session:
        (pending,) = webhooks.list_deliveries(session)
    assert (pending.event_id, pending.state, pending.attempts) == (event, "pending", 1)
    assert pending.last_error and pending.last_error.startswith("ConnectError")
    assert pending.next_attempt_ms > now_ms() - 1000  # scheduled, not dropped


def test_the_body_sent_is_the_events_one_serialization(ledger: Ledger) -> None:
    payload = {"b": 1, "a": [2, "x"]}
    assert event_bytes(payload) == b'{"a":[2,"x"],"b":1}'


def test_the_follow_deliverer_sends_webhooks_while_the_broker_is_away(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """`webhooks deliver --follow` as the service runs it, with no broker at its address: it says so
    once, keeps delivering webhooks, and keeps the events for the topic (not sent, not lost)."""
    state, url = receiver
    db = f"sqlite:///{tmp_path}/billing.db"
    ledger = Ledger(db)
    with ledger.transaction() as session:
        add_tenant(session, "acme")
        webhooks.set_endpoint(session, "acme", url, secret=SECRET)
    (event,) = record(ledger, 1)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WATTMETER_BILLING_DB": db}
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{closed}"
    service = subprocess.Popen(
        [sys.executable, "-m", "billing.cli", "webhooks", "deliver", "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not state.processed and time.monotonic() < deadline and service.poll() is None:
            time.sleep(0.2)
        assert state.processed == Counter([event]), "the webhook was not delivered"
        assert service.poll() is None  # a broker away is not a reason to exit
    finally:
        service.terminate()
        output, _ = service.communicate(timeout=30)
    assert output.count("the events wait and are sent when it is back") == 1, output
    assert "Traceback" not in output
    with ledger.transaction() as session:
        (kept,) = session.scalars(select(models.TenantEvent)).all()
    assert kept.event_id == event and kept.kafka_published_ms is None  # waits for the broker
    ledger.dispose()
