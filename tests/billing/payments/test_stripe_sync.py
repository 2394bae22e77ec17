"""Stripe sync against the two real peers: stripe-mock (every request checked against Stripe's
OpenAPI document) and localstripe (stateful, for counting what exists after a crash).

The crash test kills `wattmeter-billing stripe push` (exit 137, as `kill -9`) right after each
creating call has been answered, before wattmeter records it, then runs it again: localstripe
must hold exactly one customer, one invoice and the right items, and the keys sent by the crashed
run and its retry, in order, must be those of an uninterrupted run (recorded by a proxy).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import stripe as stripe_lib
import uvicorn
from sqlalchemy import func, select

from billing.invoicing.service import finalize_period, run_period, void
from billing.ledger.db import Ledger
from billing.ledger.models import AuditEntry, StripeEvent, StripeInvoiceSync, Tenant
from billing.ledger.store import grant_credit, upsert_tenant
from billing.payments.client import Stripe, StripeSettings
from billing.payments.events import poll
from billing.payments.stripe_sync import push
from billing.payments.webhook import webhook_app
from deploy.local.stripe_peers import (
    StripePeer,
    pay_invoice_in_localstripe,
    register_localstripe_webhook,
    unregister_localstripe_webhook,
)
from schemas.usage import KIND_ADJUSTMENT
from tests.support.billing_fixtures import HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, minutes, usage_row
from tests.support.stripe_support import RecordingProxy

ROOT = Path(__file__).resolve().parents[3]
MON_NOV_2 = NOV_1 + 24 * HOUR
KEY = "sk_test_wattmeter"
SECRET = "whsec_wattmeter_test"


def settings(url: str, retries: int = 3) -> StripeSettings:
    return StripeSettings(KEY, url, retries=retries, backoff_s=0.01, webhook_secret=SECRET)


def issued_period(
    db_url: str,
    root: Path,
    tenants: dict[str, dict[str, str]] | None = None,
    others: tuple[str, ...] = (),
    meters: tuple[str, ...] = (),
) -> Ledger:
    """acme: 2 h of one H100 (valley + peak) with energy, 10 % tax and a 1.00 credit: six lines, one
    negative; each of `others` half an hour on its own GPU; `meters`: tenants in Stripe meters mode."""
    usage = UsageWriter(root)
    usage.write(minutes("acme", MON_NOV_2 + 5 * HOUR, 120, energy_mj=36_000_000))
    for n, other in enumerate(others):
        usage.write(minutes(other, MON_NOV_2 + 9 * HOUR, 30, gpu=f"GPU-{n + 2}", energy_mj=1_000_000))
    ledger = ledger_with(db_url, tenants=tenants or {"acme": {"tax_jurisdiction": "XX"}})
    with ledger.transaction() as session:
        grant_credit(session, "test", "acme", "welcome", Decimal("1.00"), None)
        for tenant_id in meters:
            upsert_tenant(session, "test", tenant_id, stripe_mode="meters")
    run_period(ledger, root, "2026-11", "test")
    finalize_period(ledger, "test", "2026-11")
    return ledger


def cli(db_url: str, *args: str, api_base: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, WATTMETER_STRIPE_API_KEY=KEY, WATTMETER_STRIPE_API_BASE=api_base, WATTMETER_STRIPE_BACKOFF_S="0.01"
    )
    env.pop("WATTMETER_FAULT", None)
    if fault:
        env["WATTMETER_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "billing.cli", *args, "--db", db_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stripe_state(peer: StripePeer) -> dict[str, Any]:
    """What localstripe holds: customers by tenant, and per customer its invoices with their lines."""
    client = stripe_lib.StripeClient(KEY, base_addresses={"api": peer.url})
    customers = [c.to_dict() for c in client.v1.customers.list(params={"limit": 100}).data]
    state: dict[str, Any] = {"customers": [c["metadata"].get("wattmeter_tenant_id") for c in customers], "invoices": []}
    for customer in customers:
        for invoice in client.v1.invoices.list(params={"customer": customer["id"], "limit": 100}).data:
            lines = client.v1.invoices.line_items.list(invoice.id, params={"limit": 100}).data
            state["invoices"].append(
                {
                    "number": invoice.to_dict()["metadata"].get("wattmeter_invoice_number"),
                    "status": invoice.status,
                    "lines": sorted(
                        (int(line.to_dict()["metadata"]["wattmeter_line_position"]), line.amount) for line in lines
                    ),
                }
            )
        pending = client.v1.invoice_items.list(params={"customer": customer["id"], "pending": True, "limit": 100})
        state.setdefault("pending", []).extend(i.id for i in pending.data if not i.to_dict().get("invoice"))
    return state


def test_full_sync_against_stripe_mock_refuses_no_request(stripe_mock: StripePeer, tmp_path: Path):
    """Every call wattmeter makes, through every path: customers, items (one negative), invoices,
    finalize, a meters-mode tenant's meter events, a void, a credit note, the events poll."""
    ledger = issued_period(
        f"sqlite:///{tmp_path}/b.db",
        tmp_path / "usage",
        tenants={"acme": {"tax_jurisdiction": "XX"}, "beta": {}, "meterco": {}},
        others=("beta", "meterco"),
        meters=("meterco",),
    )
    usage = UsageWriter(tmp_path / "usage", partition=1)
    proxy = RecordingProxy(stripe_mock.url).start()
    try:
        client = Stripe(settings(proxy.url, retries=0))
        report = push(ledger, client, "test", period="2026-11")
        assert report.failed == [] and {o.action for o in report.outcomes} == {"pushed", "reported"}
        # late usage that lowers November: a credit note, pushed onto November's Stripe invoice
        usage.write(
            [usage_row("acme", MON_NOV_2 + 5 * HOUR, allocated_ms=-10 * MINUTE, kind=KIND_ADJUSTMENT, suffix="/fix")]
        )
        december = run_period(ledger, tmp_path / "usage", "2026-12", "test")
        assert december.outcomes[0].credit_notes == ["WM-CN-000001"]
        void(ledger, "test", "WM-000002", "wrong tenant")  # beta's
        void(ledger, "test", "WM-000003", "wrong meter")  # meterco's: its meter events are cancelled
        again = push(ledger, client, "test", period="2026-11")
        assert again.failed == []
        assert sorted(o.action for o in again.outcomes) == ["already pushed", "credit note", "voided", "voided"]
        assert poll(ledger, client) is not None
    finally:
        proxy.stop()
    refused = [c for c in proxy.calls if c.status >= 400]
    assert refused == [], f"stripe-mock refused {refused}"
    paths = {(c.method, c.path.split("?")[0]) for c in proxy.calls}
    for expected in [
        ("POST", "/v1/customers"),
        ("POST", "/v1/invoiceitems"),
        ("POST", "/v1/invoices"),
        ("POST", "/v1/billing/meter_events"),
        ("POST", "/v1/billing/meter_event_adjustments"),
        ("POST", "/v1/credit_notes"),
        ("GET", "/v1/events"),
    ]:
        assert expected in paths, f"no {expected} call in {sorted(paths)}"
    assert any(c.path.endswith("/finalize") for c in proxy.calls) and any(c.path.endswith("/void") for c in proxy.calls)
    assert all(c.idempotency_key for c in proxy.posts()), "every creating call carries an idempotency key"


def test_a_crash_between_any_two_calls_creates_nothing_twice(localstripe: StripePeer, tmp_path: Path):
    prepared = tmp_path / "prepared.db"
    issued_period(f"sqlite:///{prepared}", tmp_path / "usage").dispose()  # all in the file before it is copied

    def fresh_db(name: str) -> str:
        shutil.copy(prepared, tmp_path / name)
        return f"sqlite:///{tmp_path / name}"

    def keys(proxy: RecordingProxy) -> list[str]:
        return [c.idempotency_key or "" for c in proxy.posts()]

    from deploy.local.stripe_peers import flush_localstripe

    flush_localstripe(localstripe.url)
    proxy = RecordingProxy(localstripe.url).start()
    clean = cli(fresh_db("clean.db"), "stripe", "push", "--period", "2026-11", api_base=proxy.url)
    assert clean.returncode == 0, clean.stderr
    expected_keys, expected_state = keys(proxy), stripe_state(localstripe)
    proxy.stop()
    # customer + 6 items + invoice + finalize
    assert len(expected_keys) == 9 and len(set(expected_keys)) == 9
    assert expected_state["customers"] == ["acme"] and len(expected_state["invoices"]) == 1
    assert expected_state["invoices"][0]["status"] == "open" and len(expected_state["invoices"][0]["lines"]) == 6
    assert any(amount < 0 for _, amount in expected_state["invoices"][0]["lines"])  # the credit
    for n in range(1, len(expected_keys) + 1):
        flush_localstripe(localstripe.url)
        db = fresh_db(f"crash{n}.db")
        crashed = RecordingProxy(localstripe.url).start()
        killed = cli(db, "stripe", "push", "--period", "2026-11", api_base=crashed.url, fault=f"stripe-call:{n}")
        crashed.stop()
        assert killed.returncode == 137, f"call {n}: {killed.returncode} {killed.stderr}"
        retry = RecordingProxy(localstripe.url).start()
        resumed = cli(db, "stripe", "push", "--period", "2026-11", api_base=retry.url)
        retry.stop()
        assert resumed.returncode == 0, f"after call {n}: {resumed.stdout} {resumed.stderr}"
        assert keys(crashed) == expected_keys[:n], f"call {n}: the crashed run sent other keys"
        assert keys(crashed) + keys(retry) == expected_keys, (
            f"killed after call {n}: a call was sent twice or not at all"
        )
        state = stripe_state(localstripe)
        assert state["customers"] == ["acme"], f"after call {n}: customers {state['customers']}"
        assert [i["number"] for i in state["invoices"]] == ["WM-000001"], f"after call {n}: {state['invoices']}"
        assert state["invoices"][0]["lines"] == expected_state["invoices"][0]["lines"]
        assert state["invoices"][0]["status"] == "open" and state["pending"] == []
        # and a third run, long after (no key window matters: it looks up by metadata), does nothing
        third = RecordingProxy(localstripe.url).start()
        assert cli(db, "stripe", "push", "--period", "2026-11", api_base=third.url).returncode == 0
        third.stop()
        assert keys(third) == []


def test_failures_are_retried_with_backoff_and_shown_with_their_cause(localstripe_clean: StripePeer, tmp_path: Path):
    db = f"sqlite:///{tmp_path}/b.db"
    ledger = issued_period(db, tmp_path / "usage")
    proxy = RecordingProxy(localstripe_clean.url, fail_next=[429, 503]).start()
    notices: list[str] = []
    try:
        report = push(ledger, Stripe(settings(proxy.url), notice=notices.append), "test", period="2026-11")
    finally:
        proxy.stop()
    assert report.failed == [] and report.outcomes[0].action == "pushed"
    assert any("HTTP 429" in n for n in notices) and any("HTTP 503" in n for n in notices), notices
    first_posts = [c for c in proxy.calls if c.method == "POST"][:3]
    assert first_posts[0].idempotency_key == first_posts[1].idempotency_key == first_posts[2].idempotency_key
    assert len(stripe_state(localstripe_clean)["customers"]) == 1

    # Stripe unreachable: the invoice's sync row keeps the cause; the CLI shows it and exits 1
    db2 = f"sqlite:///{tmp_path}/c.db"
    issued_period(db2, tmp_path / "usage2")
    dead = cli(db2, "stripe", "push", "--period", "2026-11", api_base="http://127.0.0.1:9")
    assert dead.returncode == 1 and "network" in dead.stdout and "Traceback" not in dead.stderr, dead.stdout
    status = cli(db2, "stripe", "status", "--period", "2026-11", "--json", api_base="http://127.0.0.1:9")
    rows = json.loads(status.stdout)
    assert rows[0]["stripe_state"] == "pending" and "network" in rows[0]["last_error"] and rows[0]["attempts"] == 1


class WebhookServer:
    def __init__(self, ledger: Ledger) -> None:
        config = uvicorn.Config(webhook_app(ledger, SECRET), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the webhook server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def _post(url: str, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    request = urllib.request.Request(url + "/stripe/webhook", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _sign(body: bytes, secret: str = SECRET, at: int | None = None) -> str:
    """Stripe's scheme: v1 = HMAC-SHA256(secret, f"{t}.{body}")."""
    t = at or int(time.time())
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def test_webhooks_verify_signatures_mark_paid_once_and_the_poll_catches_up(
    localstripe_clean: StripePeer, tmp_path: Path
):
    ledger = issued_period(f"sqlite:///{tmp_path}/b.db", tmp_path / "usage")
    client = Stripe(settings(localstripe_clean.url))
    assert push(ledger, client, "test", period="2026-11").failed == []
    with ledger.transaction() as session:
        sync = session.scalars(select(StripeInvoiceSync)).one()
        stripe_invoice_id = sync.stripe_invoice_id
        assert sync.payment_status == "open"
    with WebhookServer(ledger) as url:
        event = {
            "id": "evt_test_paid",
            "object": "event",
            "type": "invoice.paid",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": stripe_invoice_id,
                    "object": "invoice",
                    "amount_paid": 382,
                    "currency": "usd",
                    "metadata": {},
                }
            },
        }
        body = json.dumps(event).encode()
        # a bad signature, a signature by another secret, and none at all: refused, nothing applied
        assert _post(url, body, "t=1,v1=deadbeef")[0] == 400
        assert _post(url, body, _sign(body, "whsec_other"))[0] == 400
        status, answer = _post(url, body, None)
        assert status == 400 and "Stripe-Signature" in answer["error"]
        with ledger.transaction() as session:
            assert session.scalar(select(func.count()).select_from(StripeEvent)) == 0
            assert session.get(StripeInvoiceSync, sync.invoice_id).payment_status == "open"
        # a good one marks the invoice paid
        status, answer = _post(url, body, _sign(body))
        assert status == 200 and answer["outcome"] == "paid WM-000001", answer
        with ledger.transaction() as session:
            row = session.get(StripeInvoiceSync, sync.invoice_id)
            assert (row.payment_status, row.amount_paid) == ("paid", Decimal("3.82"))
            audits = session.scalar(select(func.count()).select_from(AuditEntry))
        # the same event again changes nothing more
        status, answer = _post(url, body, _sign(body))
        assert status == 200 and answer["outcome"] == "duplicate"
        with ledger.transaction() as session:
            assert session.scalar(select(func.count()).select_from(AuditEntry)) == audits
        # an older, non-final event does not undo "paid"
        failed = dict(event, id="evt_test_failed", type="invoice.payment_failed", created=event["created"] - 60)
        body2 = json.dumps(failed).encode()
        assert _post(url, body2, _sign(body2))[1]["outcome"].startswith("ignored")

        # localstripe itself delivers signed events when the invoice is paid there
        second = issued_period(f"sqlite:///{tmp_path}/c.db", tmp_path / "usage2")
    with WebhookServer(second) as url:
        assert push(second, client, "test", period="2026-11").failed == []
        with second.transaction() as session:
            row = session.scalars(select(StripeInvoiceSync)).one()
        endpoint = register_localstripe_webhook(
            localstripe_clean.url, url + "/stripe/webhook", SECRET, events=["invoice.paid", "invoice.payment_succeeded"]
        )
        try:
            pay_invoice_in_localstripe(localstripe_clean.url, row.stripe_invoice_id)
            deadline = time.monotonic() + 20
            while True:
                with second.transaction() as session:
                    paid = session.get(StripeInvoiceSync, row.invoice_id).payment_status == "paid"
                    delivered = session.scalar(select(func.count()).select_from(StripeEvent))
                if paid:
                    break
                assert time.monotonic() < deadline, "localstripe's signed webhook never marked the invoice paid"
                time.sleep(0.2)
        finally:
            unregister_localstripe_webhook(localstripe_clean.url, endpoint)
    assert delivered >= 1
    # the poll sees the same events again (and the first invoice's): each applied once, nothing changes
    applied = poll(second, client)
    assert applied and all(
        a.outcome == "duplicate" or a.outcome.startswith("ignored") for a in applied if a.type.startswith("invoice.pa")
    ), applied
    assert all(a.outcome == "duplicate" for a in poll(second, client))
    with second.transaction() as session:
        assert session.get(Tenant, "acme").stripe_customer_id is not None
