"""The two Stripe test peers the suite starts itself (deploy/local/stripe_peers.py).

stripe-mock: every call wattmeter makes is accepted by Stripe's own OpenAPI spec.
localstripe (patched): invoices built from pending items (one a credit), finalized, listed, voided
and paid with a test card, and signed webhooks that ``stripe.Webhook.construct_event`` accepts.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from deploy.local import stripe_peers
from deploy.local.stripe_peers import (
    StripePeer,
    StripePeerUnavailable,
    flush_localstripe,
    pay_invoice_in_localstripe,
    register_localstripe_webhook,
    unregister_localstripe_webhook,
)

HOUR = 3600
DAY = 86400


def _period() -> dict[str, int]:
    end = int(time.time()) // HOUR * HOUR
    return {"start": end - 24 * HOUR, "end": end}


def test_stripe_mock_accepts_every_call_wattmeter_makes(stripe_mock: StripePeer) -> None:
    client = stripe_mock.client()
    customer = client.v1.customers.create(
        {"email": "ops@tenant.example", "name": "Tenant A", "metadata": {"wattmeter_tenant": "tenant-a"}}
    )
    item = client.v1.invoice_items.create(
        {
            "customer": customer.id,
            "amount": 12345,
            "currency": "usd",
            "description": "GPU energy, 2026-10",
            "metadata": {"wattmeter_invoice": "inv-1", "line": "0"},
            "period": _period(),
        }
    )
    credit = client.v1.invoice_items.create(
        {"customer": customer.id, "amount": -500, "currency": "usd", "description": "SLA credit"}
    )
    invoice = client.v1.invoices.create(
        {
            "customer": customer.id,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "auto_advance": False,
            "pending_invoice_items_behavior": "include",
            "metadata": {"wattmeter_invoice": "inv-1"},
        }
    )
    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    voided = client.v1.invoices.void_invoice(invoice.id)
    credit_note = client.v1.credit_notes.create(
        {
            "invoice": invoice.id,
            "lines": [{"type": "custom_line_item", "description": "Rate card fix", "quantity": 1, "unit_amount": 300}],
            "metadata": {"wattmeter_credit_note": "cn-1"},
        }
    )
    events = client.v1.events.list({"limit": 10})
    meter_event = client.v1.billing.meter_events.create(
        {
            "event_name": "gpu_energy_wh",
            "payload": {"stripe_customer_id": customer.id, "value": "42"},
            "identifier": "tenant-a:2026-10-01T00:00:00Z",
            "timestamp": int(time.time()) - HOUR,
        }
    )
    pending = client.v1.invoice_items.list({"customer": customer.id, "pending": True})
    lines = client.v1.invoices.line_items.list(invoice.id)
    assert (customer.object, item.object, credit.object) == ("customer", "invoiceitem", "invoiceitem")
    assert (invoice.object, finalized.object, voided.object) == ("invoice", "invoice", "invoice")
    assert credit_note.object == "credit_note"
    assert meter_event.object == "billing.meter_event"
    assert events.object == pending.object == lines.object == "list"


def test_stripe_mock_refuses_what_the_api_does_not_know(stripe_mock: StripePeer) -> None:
    """It is a real check: a parameter outside the spec, or a value outside an enum, is a 400."""
    client = stripe_mock.client()
    with pytest.raises(stripe.InvalidRequestError, match="additional properties"):
        client.v1.invoices.create({"customer": "cus_123", "days_until_payment": 30})
    with pytest.raises(stripe.InvalidRequestError, match="collection_method"):
        client.v1.invoices.create({"customer": "cus_123", "collection_method": "by_post"})


def test_localstripe_invoice_from_pending_items(localstripe_clean: StripePeer) -> None:
    client = localstripe_clean.client()
    customer = client.v1.customers.create(
        {"email": "ops@tenant.example", "name": "Tenant A", "metadata": {"wattmeter_tenant": "tenant-a"}}
    )
    period = _period()
    first = client.v1.invoice_items.create(
        {
            "customer": customer.id,
            "amount": 12345,
            "currency": "usd",
            "description": "GPU energy",
            "metadata": {"line": "0"},
            "period": period,
        }
    )
    second = client.v1.invoice_items.create(
        {
            "customer": customer.id,
            "amount": -2345,
            "currency": "usd",
            "description": "SLA credit",
            "metadata": {"line": "1"},
            "period": period,
        }
    )
    assert (first.period.start, first.period.end) == (period["start"], period["end"])
    assert {ii.id for ii in client.v1.invoice_items.list({"customer": customer.id, "pending": True})} == {
        first.id,
        second.id,
    }

    invoice = client.v1.invoices.create(
        {
            "customer": customer.id,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "auto_advance": False,
            "pending_invoice_items_behavior": "include",
            "metadata": {"wattmeter_invoice": "inv-1"},
        }
    )
    assert (invoice.status, invoice.collection_method, invoice.auto_advance) == ("draft", "send_invoice", False)
    assert invoice.due_date == invoice.created + 30 * DAY
    assert invoice.metadata.to_dict() == {"wattmeter_invoice": "inv-1"}

    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open" and finalized.status_transitions.finalized_at is not None
    assert finalized.total == 10000 and finalized.currency == "usd" and finalized.number
    lines = list(client.v1.invoices.line_items.list(invoice.id, {"limit": 1}).auto_paging_iter())
    assert sorted((line.amount, line.metadata.to_dict()["line"]) for line in lines) == [(-2345, "1"), (12345, "0")]
    assert {line.parent.invoice_item_details.invoice_item for line in lines} == {first.id, second.id}
    assert list(client.v1.invoice_items.list({"customer": customer.id, "pending": True})) == []

    with pytest.raises(stripe.InvalidRequestError, match="already finalized"):
        client.v1.invoices.finalize_invoice(invoice.id)
    [listed] = client.v1.invoices.list({"customer": customer.id}).data
    assert listed.id == invoice.id and listed.metadata.to_dict() == {"wattmeter_invoice": "inv-1"}
    [only] = client.v1.customers.list().data
    assert only.id == customer.id and only.metadata.to_dict() == {"wattmeter_tenant": "tenant-a"}

    assert client.v1.invoices.void_invoice(invoice.id).status == "void"
    created = next(e for e in client.v1.events.list({"type": "invoice.created"}) if e.data.object.id == invoice.id)
    assert created.data.object.collection_method == "send_invoice"
    types = [e.type for e in client.v1.events.list({"limit": 100})]
    assert types[0] == "invoice.voided" and "invoice.finalized" in types


def test_localstripe_excludes_pending_items_by_default_and_adds_items_to_a_draft(localstripe: StripePeer) -> None:
    client = localstripe.client()
    customer = client.v1.customers.create({"name": "Tenant B"})
    pending = client.v1.invoice_items.create({"customer": customer.id, "amount": 700, "currency": "eur"})
    invoice = client.v1.invoices.create({"customer": customer.id})
    assert invoice.collection_method == "charge_automatically" and invoice.lines.data == []
    added = client.v1.invoice_items.create(
        {"customer": customer.id, "invoice": invoice.id, "amount": 900, "currency": "eur", "metadata": {"line": "0"}}
    )
    [line] = client.v1.invoices.line_items.list(invoice.id).data
    assert (line.amount, line.metadata.to_dict(), line.parent.invoice_item_details.invoice_item) == (
        900,
        {"line": "0"},
        added.id,
    )
    assert [ii.id for ii in client.v1.invoice_items.list({"customer": customer.id, "pending": True})] == [pending.id]
    with pytest.raises(stripe.InvalidRequestError, match="Received unknown parameter: days_until_payment"):
        client.v1.invoices.create({"customer": customer.id, "days_until_payment": 3})
    with pytest.raises(stripe.InvalidRequestError, match="send_invoice need"):
        client.v1.invoices.create({"customer": customer.id, "collection_method": "send_invoice"})


def test_localstripe_store_flush(localstripe: StripePeer) -> None:
    client = localstripe.client()
    client.v1.customers.create({"name": "before the flush"})
    flush_localstripe(localstripe.url)
    kept = client.v1.customers.create({"name": "after the flush", "metadata": {"k": "v"}})
    assert [c.id for c in client.v1.customers.list()] == [kept.id]


def test_localstripe_replays_idempotent_requests(localstripe_clean: StripePeer) -> None:
    client = localstripe_clean.client()
    params = {"name": "Tenant D", "metadata": {"wattmeter_tenant_id": "d"}}
    first = client.v1.customers.create(params, {"idempotency_key": "wm-customer-d"})
    again = client.v1.customers.create(params, {"idempotency_key": "wm-customer-d"})
    assert again.id == first.id and again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert [c.id for c in client.v1.customers.list()] == [first.id]
    with pytest.raises(stripe.IdempotencyError, match="same parameters"):
        client.v1.customers.create({"name": "someone else"}, {"idempotency_key": "wm-customer-d"})
    flush_localstripe(localstripe_clean.url)  # forgets the keys with the objects
    assert client.v1.customers.create(params, {"idempotency_key": "wm-customer-d"}).id != first.id


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[bytes, str]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get("Stripe-Signature", "")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[tuple[bytes, str]]]]:
    """A tiny HTTP server on a free loopback port: its URL and the (body, Stripe-Signature) received."""
    received: list[tuple[bytes, str]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stripe/webhook", received
    server.shutdown()
    server.server_close()


def ours(received: list[tuple[bytes, str]], object_id: str) -> list[bytes]:
    return [body for body, _ in received if json.loads(body)["data"]["object"].get("id") == object_id]


def test_localstripe_signed_webhooks_verify(
    localstripe_clean: StripePeer, webhook_receiver: tuple[str, list[tuple[bytes, str]]]
) -> None:
    url, received = webhook_receiver
    secret = "whsec_wattmeter_test"
    wanted = ["invoice.finalized", "invoice.paid", "invoice.payment_succeeded"]
    endpoint = register_localstripe_webhook(localstripe_clean.url, url, secret, events=wanted)
    try:
        client = localstripe_clean.client()
        customer = client.v1.customers.create({"name": "Tenant C"})
        client.v1.invoice_items.create({"customer": customer.id, "amount": 4200, "currency": "usd"})
        invoice = client.v1.invoices.create(
            {"customer": customer.id, "pending_invoice_items_behavior": "include", "metadata": {"wm": "inv-3"}}
        )
        client.v1.invoices.finalize_invoice(invoice.id)
        paid = pay_invoice_in_localstripe(localstripe_clean.url, invoice.id)
        assert paid["status"] == "paid" and paid["amount_paid"] == 4200
        # deliveries leave ~1 s after each event, to the endpoints registered then: events of
        # earlier tests may arrive too, so only this invoice's are counted
        deadline = time.monotonic() + 10
        while len(ours(received, invoice.id)) < len(wanted) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        unregister_localstripe_webhook(localstripe_clean.url, endpoint)

    events = [stripe.Webhook.construct_event(body, header, secret) for body, header in received]
    events = [e for e in events if e.data.object.id == invoice.id]
    assert sorted(e.type for e in events) == sorted(wanted)
    for event in events:
        assert event.data.object.id == invoice.id and event.data.object.metadata.to_dict() == {"wm": "inv-3"}
    assert {e.data.object.status for e in events if e.type != "invoice.finalized"} == {"paid"}
    body, header = next((b, h) for b, h in received if b in ours(received, invoice.id))
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, header, "whsec_other")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b"inv-3", b"inv-4"), header, secret)


def test_missing_stripe_mock_and_go_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATTMETER_STRIPE_MOCK", raising=False)
    monkeypatch.setattr(stripe_peers, "STRIPE_MOCK_BIN", tmp_path / "bin" / "stripe-mock")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        StripePeerUnavailable, match=r"stripe-mock not found .* `go` is not installed: install Go 1\.22"
    ):
        stripe_peers.ensure_stripe_mock()
