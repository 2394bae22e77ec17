"""Two real Stripe test peers on loopback, started by the tests themselves: stripe-mock and localstripe.

**stripe-mock** (Stripe's official mock, Go, github.com/stripe/stripe-mock) checks every request
against Stripe's OpenAPI spec (paths, parameter names, types, enums) and answers with fixture
objects; it keeps no state (a finalized invoice still reads ``draft``). It is what tells us that
a call is one the real API accepts. The binary is built once with
``GOBIN=$WATTMETER_CACHE_DIR/bin/stripe-mock-v0.203.0 go install github.com/stripe/stripe-mock@v0.203.0`` (``make
stripe-mock``; the cache is ``~/.cache/wattmeter`` by default, as for the Kafka jars; ``ensure_stripe_mock()``
does the same when it is missing) and runs
as ``stripe-mock -http-addr 127.0.0.1:<free port> -https-addr 127.0.0.1:`` (``-http-addr`` alone
does not turn off its HTTPS listener, which would take the fixed port 12112 on every interface;
``127.0.0.1:`` lets the kernel pick a loopback port for it).

**localstripe** (PyPI, 1.15.x, an aiohttp app) keeps state in memory: customers, invoice items,
invoices moving draft -> open -> paid/void, events, and signed webhook deliveries. It runs in a
child process, ``python -m deploy.local.stripe_peers localstripe --port N``, which imports it,
applies ``patch_localstripe()`` and serves ``localstripe.server.app`` on 127.0.0.1 only, from an
empty store that is never written to or read from disk (its own ``start()`` binds ``::`` and
loads ``/tmp/localstripe.pickle``, and every write pickles the whole store to that shared file).

What ``patch_localstripe()`` adds to localstripe 1.15, and why: wattmeter pushes invoices with the
current API (stripe-python 16, API version 2026-10-28), and localstripe 1.15 lacks the finalize
call and the current invoice parameters, answers some valid calls with a 500 (an unexpected
keyword is a ``TypeError`` there), and cannot void an invoice that has no payment attempt. Each
addition follows the Stripe API reference (https://docs.stripe.com/api):

- ``POST /v1/invoices/{invoice}/finalize`` (/api/invoices/finalize; ``auto_advance``): draft ->
  open through localstripe's own ``Invoice._finalize()``, assigns ``number``, emits
  ``invoice.finalized`` (and, for a zero total, ``invoice.paid``); a non-draft invoice is a 400
  "This invoice is already finalized, you can't re-finalize a non-draft invoice."
- ``POST /v1/invoices`` (/api/invoices/create): ``collection_method``
  (``charge_automatically``|``send_invoice``), ``days_until_due`` and ``due_date`` (stored as the
  invoice's ``due_date``; ``send_invoice`` needs one of them), ``auto_advance`` (default false),
  ``pending_invoice_items_behavior`` (``include``|``exclude``, default ``exclude`` as in the
  current API: localstripe always swept the pending items in), ``currency``, and ``metadata``
  (localstripe dropped it). An invoice with no item is a valid empty draft.
- ``POST /v1/invoiceitems`` (/api/invoiceitems/create): ``period[start]``/``period[end]``
  (localstripe only knew its own ``period_start``/``period_end``), and ``invoice``: the item
  becomes a line of that draft invoice (localstripe stored the id but never added the line).
  Negative amounts (credits) were already accepted.
- ``GET /v1/invoiceitems`` (/api/invoiceitems/list): ``pending`` and ``invoice`` filters; without
  ``pending`` it lists every item, as Stripe does (localstripe only listed pending ones).
- ``GET /v1/invoices`` (/api/invoices/list): ``status`` and ``collection_method`` filters.
- ``GET /v1/invoices/{invoice}/lines`` (/api/invoices/invoice_lines): ``starting_after``, so that
  auto-paging works past one page; each line has ``parent.invoice_item_details.invoice_item``
  (/api/invoice-line-item/object) besides localstripe's older ``invoice_item``.
- ``POST /v1/invoices/{invoice}/void`` (/api/invoices/void): works on an open invoice with no
  payment attempt (localstripe cancelled a ``None`` PaymentIntent: 400), refuses a draft (delete
  it instead), emits ``invoice.voided``.
- ``POST /v1/invoices/{invoice}/pay`` (/api/invoices/pay): a draft is finalized first; a
  successful payment also emits ``invoice.paid`` (localstripe only sent
  ``invoice.payment_succeeded``, next to ``payment_intent.succeeded``).
- ``GET /v1/customers`` and ``GET /v1/events``: newest first, as Stripe lists (localstripe listed
  them oldest first).
- On the calls above an unknown parameter is a 400 ``parameter_unknown`` "Received unknown
  parameter: X" (as Stripe answers) and a Stripe parameter localstripe does not model is a 400
  naming it, never a 500 (localstripe's own creates, e.g. customers, answer 400 "Unexpected X").
- Idempotent requests (/api/idempotent_requests): a POST's first successful answer is kept by
  its ``Idempotency-Key`` and replayed (header ``Idempotent-Replayed: true``) for the same path
  and parameters; other parameters under the same key are a 400 ``idempotency_error``
  (localstripe ignored the header and created the object again). ``DELETE /_config/data``
  forgets the keys too.
- Test control, not Stripe API: ``DELETE /_config/webhooks/{id}`` removes an endpoint registered
  with localstripe's ``POST /_config/webhooks/{id}`` (url, secret, events). ``DELETE /_config/data``
  (localstripe's own) empties the store; it keeps the webhook endpoints.

Webhooks: localstripe signs each delivery as Stripe does, ``Stripe-Signature: t=<event.created>,
v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>``, so ``stripe.Webhook.construct_event(payload,
header, secret)`` accepts it. Each delivery leaves about 1 s after its event, to the endpoints
registered at that moment (so events of just before a registration may arrive too).

Not in localstripe at all (404): credit notes (``/v1/credit_notes``) and billing meter events
(``/v1/billing/meter_events``); stripe-mock is the peer that checks those calls.

Paying an invoice in localstripe needs a card on the customer, as in Stripe's test mode: attach
the test payment method ``pm_card_visa`` (``POST /v1/payment_methods/pm_card_visa/attach``,
which gives back a new ``pm_...``) and make it ``invoice_settings[default_payment_method]``;
``pay_invoice_in_localstripe()`` does both, then ``POST /v1/invoices/{id}/pay``.

    python -m deploy.local.stripe_peers run                    # both peers until Ctrl-C; prints their URLs
    python -m deploy.local.stripe_peers stripe-mock-path       # install stripe-mock if missing; its path
    python -m deploy.local.stripe_peers localstripe --port N   # the patched localstripe (foreground)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.process import ChildProcess, PartUnavailable, file_lock, free_port

ROOT = Path(__file__).resolve().parents[2]
# built once into the cache, like the Kafka jars
BIN_DIR = Path(os.environ.get("WATTMETER_CACHE_DIR") or Path.home() / ".cache" / "wattmeter") / "bin"
STRIPE_MOCK_VERSION = "v0.203.0"  # the stripe-mock every machine tests against (a lock for a Go tool)
STRIPE_MOCK_BIN = BIN_DIR / f"stripe-mock-{STRIPE_MOCK_VERSION}" / "stripe-mock"
STRIPE_MOCK_PACKAGE = f"github.com/stripe/stripe-mock@{STRIPE_MOCK_VERSION}"
GO_HINT = "install Go 1.22+ (https://go.dev/dl/), then `make stripe-mock`"
LOCALSTRIPE_SERIES = "1.15"
LOCALSTRIPE_HINT = "pip install 'localstripe~=1.15.10' (wattmeter's dev extra)"
TEST_API_KEY = "sk_test_123"


class StripePeerUnavailable(PartUnavailable):
    """A Stripe test peer could not be had; the message names what is missing."""


# --------------------------------------------------------------------------- the peers


@dataclass
class StripePeer:
    """A running Stripe test peer: ``url`` is its API base (``http://127.0.0.1:PORT``)."""

    name: str
    url: str
    child: ChildProcess = field(repr=False)
    api_key: str = TEST_API_KEY
    temp_dir: Path | None = field(default=None, repr=False)  # removed by stop()

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    def alive(self) -> bool:
        return self.child.alive()

    def log_tail(self, lines: int = 40) -> str:
        return self.child.log_tail(lines)

    def client(self) -> Any:
        """A ``stripe.StripeClient`` on this peer (no retries)."""
        import stripe

        return stripe.StripeClient(self.api_key, base_addresses={"api": self.url}, max_network_retries=0)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 10 s; its temporary folder is removed. Safe twice."""
        self.child.stop(10)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure_stripe_mock() -> Path:
    """The stripe-mock binary: ``$WATTMETER_STRIPE_MOCK``, else STRIPE_MOCK_VERSION built once into
    ``$WATTMETER_CACHE_DIR/bin/stripe-mock-<version>`` with ``go install`` (under a file lock; about 25 s with
    an empty Go module cache). A stripe-mock on PATH is not used: its version is unknown."""
    override = os.environ.get("WATTMETER_STRIPE_MOCK")
    if override:
        if _executable(Path(override)):
            return Path(override)
        raise StripePeerUnavailable(f"$WATTMETER_STRIPE_MOCK={override} is not an executable file")
    if _executable(STRIPE_MOCK_BIN):
        return STRIPE_MOCK_BIN
    go = shutil.which("go")
    if go is None:
        raise StripePeerUnavailable(f"stripe-mock not found at {STRIPE_MOCK_BIN} and `go` is not installed: {GO_HINT}")
    with file_lock(BIN_DIR / ".stripe-mock.lock"):
        if _executable(STRIPE_MOCK_BIN):  # built meanwhile by another process
            return STRIPE_MOCK_BIN
        command = [go, "install", STRIPE_MOCK_PACKAGE]
        try:
            gobin = str(STRIPE_MOCK_BIN.parent)
            done = subprocess.run(
                command, env={**os.environ, "GOBIN": gobin}, capture_output=True, text=True, timeout=600
            )
        except subprocess.TimeoutExpired:
            raise StripePeerUnavailable(f"`go install {STRIPE_MOCK_PACKAGE}` did not finish within 600 s") from None
        if done.returncode != 0 or not _executable(STRIPE_MOCK_BIN):
            raise StripePeerUnavailable(
                f"`GOBIN={STRIPE_MOCK_BIN.parent} go install {STRIPE_MOCK_PACKAGE}` failed (exit {done.returncode}): "
                "it needs Go 1.22+ and the Go module proxy (or a filled module cache)",
                (done.stdout + done.stderr)[-3000:],
            )
    return STRIPE_MOCK_BIN


def _answers(url: str, api_key: str = TEST_API_KEY) -> bool:
    """Whether ``GET /v1/customers`` answers 200 with the test key."""
    request = urllib.request.Request(f"{url}/v1/customers?limit=1", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status) == 200
    except (OSError, ValueError):
        return False


def _launch(name: str, command: list[str], port: int, folder: Path, timeout_s: float, **child: Any) -> StripePeer:
    process = ChildProcess(name, command, folder / f"{name}.log", **child)
    peer = StripePeer(name, f"http://127.0.0.1:{port}", process, temp_dir=folder)
    process.start(lambda: _answers(peer.url), timeout_s, StripePeerUnavailable)  # stops it when it fails
    return peer


def launch_stripe_mock(timeout_s: float = 30) -> StripePeer:
    """A running stripe-mock on a free 127.0.0.1 port (installed first when missing); ``stop()`` it."""
    binary = ensure_stripe_mock()
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="wattmeter-stripe-mock-"))
    command = [str(binary), "-http-addr", f"127.0.0.1:{port}", "-https-addr", "127.0.0.1:"]
    return _launch("stripe-mock", command, port, folder, timeout_s)


def _check_localstripe() -> None:
    missing = [name for name in ("localstripe", "aiohttp") if importlib.util.find_spec(name) is None]
    if missing:
        raise StripePeerUnavailable(f"{' and '.join(missing)} not installed in {sys.executable}: {LOCALSTRIPE_HINT}")
    version = importlib.metadata.version("localstripe")
    if version.split(".")[:2] != LOCALSTRIPE_SERIES.split("."):
        raise StripePeerUnavailable(
            f"localstripe {version} is installed, deploy/local/stripe_peers.py patches {LOCALSTRIPE_SERIES}.x: "
            f"{LOCALSTRIPE_HINT}"
        )


def launch_localstripe(timeout_s: float = 30) -> StripePeer:
    """A running, patched localstripe (empty store) on a free 127.0.0.1 port; ``stop()`` it."""
    _check_localstripe()
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="wattmeter-localstripe-"))
    command = [sys.executable, "-m", "deploy.local.stripe_peers", "localstripe", "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return _launch("localstripe", command, port, folder, timeout_s, cwd=ROOT, env=env)


@contextlib.contextmanager
def start_stripe_mock(timeout_s: float = 30) -> Iterator[StripePeer]:
    """stripe-mock for the duration of the block."""
    peer = launch_stripe_mock(timeout_s)
    try:
        yield peer
    finally:
        peer.stop()


@contextlib.contextmanager
def start_localstripe(timeout_s: float = 30) -> Iterator[StripePeer]:
    """The patched localstripe for the duration of the block."""
    peer = launch_localstripe(timeout_s)
    try:
        yield peer
    finally:
        peer.stop()


# --------------------------------------------------------------------------- localstripe helpers


def _call(base_url: str, method: str, path: str, form: dict[str, Any] | None = None, body: Any = None) -> Any:
    """One request (form-encoded like stripe-python, or JSON ``body``); the decoded JSON answer, or
    None for an empty one. An HTTP error raises ``RuntimeError`` with the answer's text."""
    data, headers = None, {"Authorization": f"Bearer {TEST_API_KEY}"}
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        data, headers["Content-Type"] = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    request = urllib.request.Request(f"{base_url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
    return json.loads(text) if text.strip() else None


def flush_localstripe(base_url: str) -> None:
    """Empty localstripe's store (``DELETE /_config/data``): no customers, items, invoices, events.
    Registered webhook endpoints are kept."""
    _call(base_url, "DELETE", "/_config/data")


def register_localstripe_webhook(
    base_url: str, url: str, secret: str, events: list[str] | None = None, endpoint_id: str | None = None
) -> str:
    """Have localstripe POST every event (or only ``events``) to ``url``, signed with ``secret``
    (``POST /_config/webhooks/{id}``); the endpoint's id, for ``unregister_localstripe_webhook``."""
    endpoint_id = endpoint_id or f"we_{uuid.uuid4().hex[:16]}"
    _call(base_url, "POST", f"/_config/webhooks/{endpoint_id}", body={"url": url, "secret": secret, "events": events})
    return endpoint_id


def unregister_localstripe_webhook(base_url: str, endpoint_id: str) -> None:
    """Stop deliveries to that endpoint (``DELETE /_config/webhooks/{id}``, added by the patch)."""
    _call(base_url, "DELETE", f"/_config/webhooks/{endpoint_id}")


def give_customer_card_in_localstripe(base_url: str, customer_id: str) -> str:
    """Attach Stripe's test card ``pm_card_visa`` to the customer and make it the default for
    invoices (``invoice_settings[default_payment_method]``), as one does in Stripe's test mode;
    the new payment method's id."""
    method = _call(base_url, "POST", "/v1/payment_methods/pm_card_visa/attach", {"customer": customer_id})
    _call(base_url, "POST", f"/v1/customers/{customer_id}", {"invoice_settings[default_payment_method]": method["id"]})
    return str(method["id"])


def pay_invoice_in_localstripe(base_url: str, invoice_id: str) -> dict[str, Any]:
    """Pay an invoice with a card: the customer gets ``pm_card_visa`` as default payment method when
    it has none, then ``POST /v1/invoices/{id}/pay`` (a draft is finalized first). The paid
    invoice; events ``invoice.paid``, ``invoice.payment_succeeded`` and ``payment_intent.succeeded``
    follow."""
    invoice = _call(base_url, "GET", f"/v1/invoices/{invoice_id}")
    customer = _call(base_url, "GET", f"/v1/customers/{invoice['customer']}")
    if not customer["invoice_settings"].get("default_payment_method") and not customer.get("default_source"):
        give_customer_card_in_localstripe(base_url, customer["id"])
    paid: dict[str, Any] = _call(base_url, "POST", f"/v1/invoices/{invoice_id}/pay", {})
    return paid


# --------------------------------------------------------------------------- the localstripe patch


def patch_localstripe() -> Any:
    """Add to localstripe 1.15 what wattmeter needs of the current Stripe API (the module docstring
    lists it) and keep its store in memory only; ``localstripe.server.app``. It must run before
    ``localstripe.server`` is first imported (the routes are built at that import)."""
    import localstripe
    from localstripe import resources as r

    if getattr(r, "_wattmeter_patched", False):
        from localstripe import server as patched

        return patched.app
    if localstripe.__version__.split(".")[:2] != LOCALSTRIPE_SERIES.split("."):
        raise StripePeerUnavailable(f"localstripe {localstripe.__version__} is not {LOCALSTRIPE_SERIES}.x")
    if "localstripe.server" in sys.modules:
        raise RuntimeError("patch_localstripe() must run before localstripe.server is imported")

    UserError = r.UserError
    Customer, Event, Invoice, InvoiceItem = r.Customer, r.Event, r.Invoice, r.InvoiceItem
    InvoiceLineItem, List, PaymentIntent, Subscription = r.InvoiceLineItem, r.List, r.PaymentIntent, r.Subscription
    to_int, to_bool = r.try_convert_to_int, r.try_convert_to_bool

    # a fresh store, in memory only: never pickled to (or loaded from) the shared /tmp/localstripe.pickle
    r.Store.dump_to_disk = lambda self: None

    def bad(message: str, param: str | None = None, code: str | None = None) -> Exception:
        contents = {k: v for k, v in (("param", param), ("code", code)) if v is not None}
        error: Exception = UserError(400, message, contents or None)
        return error

    def reject(kwargs: dict[str, Any], not_modelled: tuple[str, ...] = ()) -> None:
        for name in sorted(kwargs):
            if name in not_modelled:
                raise bad(f"The parameter {name} is not supported by localstripe (wattmeter's patch)", name)
            raise bad(f"Received unknown parameter: {name}", name, "parameter_unknown")

    def emit(event_type: str, obj: Any) -> None:
        r.schedule_webhook(Event(event_type, obj))

    def refresh_event(event_type: str, obj: Any) -> None:
        """Re-export the newest ``event_type`` event of ``obj`` (sent after the request ends)."""
        for key in reversed(r.store):
            event = r.store[key]
            if key.startswith("event:") and event.type == event_type and event.data["object"].get("id") == obj.id:
                event.data = {"object": obj._export()}
                return

    # ------------------------------------------------------------------ invoices: new fields
    Invoice.auto_advance = False
    Invoice.due_date = None
    Invoice.number = None
    original_invoice_create = Invoice._api_create

    def invoice_create(
        cls: Any,
        /,
        customer: Any = None,
        subscription: Any = None,
        collection_method: Any = None,
        days_until_due: Any = None,
        due_date: Any = None,
        auto_advance: Any = None,
        pending_invoice_items_behavior: Any = None,
        currency: Any = None,
        description: Any = None,
        metadata: Any = None,
        default_tax_rates: Any = None,
        **kwargs: Any,
    ) -> Any:
        reject(kwargs, ("account_tax_ids", "automatic_tax", "custom_fields", "discounts", "footer", "issuer"))
        days_until_due, due_date, auto_advance = to_int(days_until_due), to_int(due_date), to_bool(auto_advance)
        method = collection_method or "charge_automatically"
        behavior = pending_invoice_items_behavior or "exclude"
        if not customer:
            raise bad("Missing required param: customer.", "customer")
        if type(customer) is not str or not customer.startswith("cus_"):
            raise bad(f"No such customer: '{customer}'", "customer", "resource_missing")
        if method not in ("charge_automatically", "send_invoice"):
            raise bad(f"Invalid collection_method: {method!r}", "collection_method")
        if behavior not in ("include", "exclude"):
            raise bad(f"Invalid pending_invoice_items_behavior: {behavior!r}", "pending_invoice_items_behavior")
        for name, value in (("days_until_due", days_until_due), ("due_date", due_date)):
            if value is not None and (type(value) is not int or value < 0):
                raise bad(f"Invalid integer: {value}", name)
        if auto_advance is not None and type(auto_advance) is not bool:
            raise bad(f"Invalid boolean: {auto_advance}", "auto_advance")
        if metadata is not None and type(metadata) is not dict:
            raise bad("Invalid metadata: it must be a hash of keys and values", "metadata")
        if currency is not None and type(currency) is not str:
            raise bad(f"Invalid currency: {currency}", "currency")
        if method == "send_invoice" and days_until_due is None and due_date is None:
            raise bad("Invoices with collection_method=send_invoice need days_until_due or due_date.", "days_until_due")
        if method == "charge_automatically" and (days_until_due is not None or due_date is not None):
            raise bad("days_until_due and due_date are only for collection_method=send_invoice.", "days_until_due")
        if subscription is not None:  # localstripe's own subscription path
            invoice = original_invoice_create(
                customer=customer,
                subscription=subscription,
                description=description,
                default_tax_rates=default_tax_rates,
            )
        else:
            Customer._api_retrieve(customer)  # 404 when it does not exist
            hidden = []
            if behavior == "exclude":  # hide the customer's pending items from Invoice(), which takes them all
                for key, item in list(r.store.items()):
                    if key.startswith("invoiceitem:") and item.customer == customer and item.invoice is None:
                        item.invoice = "in_excluded"
                        hidden.append(item)
            try:
                invoice = Invoice(customer=customer, description=description, default_tax_rates=default_tax_rates)
            finally:
                for item in hidden:
                    item.invoice = None
            if currency and not invoice.lines._list:
                invoice.currency = currency.lower()
        invoice.metadata = dict(metadata or {})
        invoice.collection_method = method
        invoice.auto_advance = bool(auto_advance)
        if due_date is None and days_until_due is not None:
            due_date = invoice.created + days_until_due * 86400
        invoice.due_date = due_date
        refresh_event("invoice.created", invoice)
        return invoice

    Invoice._api_create = classmethod(invoice_create)

    original_invoice_list = Invoice._api_list_all

    def invoice_list(cls: Any, /, url: Any, status: Any = None, collection_method: Any = None, **kwargs: Any) -> Any:
        known = {"customer", "subscription", "limit", "starting_after"}
        reject({k: v for k, v in kwargs.items() if k not in known}, ("created", "due_date", "ending_before"))
        if status is not None and status not in ("draft", "open", "paid", "uncollectible", "void"):
            raise bad(f"Invalid status: {status!r}", "status")
        listed = original_invoice_list(url, **kwargs)
        if status is not None:
            listed._list = [i for i in listed._list if i.status == status]
        if collection_method is not None:
            listed._list = [i for i in listed._list if i.collection_method == collection_method]
        return listed

    Invoice._api_list_all = classmethod(invoice_list)

    def next_number(invoice: Any) -> str:
        prefix = hashlib.sha1(invoice.customer.encode()).hexdigest()[:8].upper()
        numbered = [k for k, v in r.store.items() if k.startswith("invoice:") and v.customer == invoice.customer]
        seq = sum(1 for k in numbered if r.store[k].number is not None) + 1
        return f"{prefix}-{seq:04d}"

    def finalize_invoice(id: Any = None, auto_advance: Any = None, **kwargs: Any) -> Any:
        reject(kwargs)
        auto_advance = to_bool(auto_advance)
        if auto_advance is not None and type(auto_advance) is not bool:
            raise bad(f"Invalid boolean: {auto_advance}", "auto_advance")
        invoice = Invoice._api_retrieve(id)
        if invoice.status != "draft":
            raise bad("This invoice is already finalized, you can't re-finalize a non-draft invoice.")
        if auto_advance is not None:
            invoice.auto_advance = auto_advance
        invoice._finalize()
        invoice.number = next_number(invoice)
        emit("invoice.finalized", invoice)
        if invoice.status == "paid":  # nothing to pay: paid on finalization, as in Stripe
            invoice._on_payment_success()
        return invoice

    original_pay = Invoice._api_pay_invoice

    def pay_invoice(id: Any = None, **kwargs: Any) -> Any:
        reject(kwargs, ("forgive", "mandate", "off_session", "paid_out_of_band", "payment_method", "source"))
        if Invoice._api_retrieve(id).status == "draft":
            finalize_invoice(id)
            if Invoice._api_retrieve(id).status == "paid":
                return Invoice._api_retrieve(id)
        return original_pay(id)

    original_success = Invoice._on_payment_success

    def on_payment_success(self: Any) -> None:
        original_success(self)
        emit("invoice.paid", self)

    Invoice._on_payment_success = on_payment_success

    def void_invoice(id: Any = None, **kwargs: Any) -> Any:
        reject(kwargs)
        invoice = Invoice._api_retrieve(id)
        if invoice.status != "open":
            raise bad(f"You can only void an open invoice; this one is {invoice.status} (delete a draft instead).")
        if invoice.payment_intent:
            intent = PaymentIntent._api_retrieve(invoice.payment_intent)
            if intent.status in ("requires_payment_method", "requires_capture", "requires_confirmation"):
                PaymentIntent._api_cancel(intent.id)
        invoice._voided = True
        invoice.status_transitions["voided_at"] = int(time.time())
        if invoice.subscription:
            Subscription._api_retrieve(invoice.subscription)._on_initial_payment_voided(invoice)
        emit("invoice.voided", invoice)
        return invoice

    def list_lines(id: Any = None, limit: Any = None, starting_after: Any = None, **kwargs: Any) -> Any:
        reject(kwargs, ("ending_before",))
        invoice = Invoice._api_retrieve(id)
        lines = List(f"/v1/invoices/{id}/lines", limit=limit, starting_after=starting_after)
        lines._list = invoice.lines._list
        return lines

    def line_parent(self: Any) -> dict[str, Any]:
        if self.type == "invoiceitem":
            details = {"invoice": self.invoice, "invoice_item": self.invoice_item, "proration": self.proration}
            details |= {"proration_details": {"credited_items": None}, "subscription": self.subscription}
            return {"type": "invoice_item_details", "invoice_item_details": details, "subscription_item_details": None}
        details = {"invoice_item": None, "proration": self.proration, "proration_details": {"credited_items": None}}
        details |= {"subscription": self.subscription, "subscription_item": self.subscription_item}
        return {"type": "subscription_item_details", "invoice_item_details": None, "subscription_item_details": details}

    InvoiceLineItem.parent = property(line_parent)

    # ------------------------------------------------------------------ lists: newest first, as Stripe lists
    def newest_first(original: Any) -> Any:
        def list_all(cls: Any, /, url: Any, **kwargs: Any) -> Any:
            listed = original(url, **kwargs)
            listed._list.reverse()  # the store keeps insertion order
            return listed

        return classmethod(list_all)

    Customer._api_list_all = newest_first(Customer._api_list_all)
    Event._api_list_all = newest_first(Event._api_list_all)

    # ------------------------------------------------------------------ invoice items
    def invoiceitem_create(cls: Any, /, period: Any = None, invoice: Any = None, **data: Any) -> Any:
        if period is not None:
            if type(period) is not dict or set(period) != {"start", "end"}:
                raise bad("Invalid period: it needs period[start] and period[end]", "period")
            data["period_start"], data["period_end"] = period["start"], period["end"]
        target = None
        if invoice is not None:
            if type(invoice) is not str or not invoice.startswith("in_"):
                raise bad(f"No such invoice: '{invoice}'", "invoice", "resource_missing")
            target = Invoice._api_retrieve(invoice)
            if target.status != "draft":
                raise bad(
                    f"Invoice {invoice} is {target.status}: items can only be added to a draft invoice", "invoice"
                )
            currency = str(data.get("currency", "")).lower()
            if target.lines._list and currency != target.currency:
                raise bad(f"The invoice's currency is {target.currency}, the item's {currency}", "currency")
        item = cls(invoice=invoice, **data)
        if target is not None:
            if not target.lines._list:
                target.currency = item.currency
            target.lines._list.append(InvoiceLineItem(item))
        return item

    InvoiceItem._api_create = classmethod(invoiceitem_create)

    def invoiceitem_list(
        cls: Any,
        /,
        url: Any,
        customer: Any = None,
        invoice: Any = None,
        pending: Any = None,
        limit: Any = None,
        starting_after: Any = None,
        **kwargs: Any,
    ) -> Any:
        reject(kwargs, ("created", "ending_before"))
        pending = to_bool(pending)
        if customer is not None and (type(customer) is not str or not customer.startswith("cus_")):
            raise bad(f"No such customer: '{customer}'", "customer", "resource_missing")
        if invoice is not None and (type(invoice) is not str or not invoice.startswith("in_")):
            raise bad(f"No such invoice: '{invoice}'", "invoice", "resource_missing")
        if pending is not None and type(pending) is not bool:
            raise bad(f"Invalid boolean: {pending}", "pending")
        listed = super(InvoiceItem, cls)._api_list_all(url, limit=limit, starting_after=starting_after)
        if customer is not None:
            Customer._api_retrieve(customer)  # 404 when it does not exist
            listed._list = [ii for ii in listed._list if ii.customer == customer]
        if invoice is not None:
            Invoice._api_retrieve(invoice)
            listed._list = [ii for ii in listed._list if ii.invoice == invoice]
        if pending is not None:
            listed._list = [ii for ii in listed._list if (ii.invoice is None) == pending]
        listed._list.sort(key=lambda ii: ii.date, reverse=True)
        return listed

    InvoiceItem._api_list_all = classmethod(invoiceitem_list)

    # ------------------------------------------------------------------ routes
    replaced = {
        ("POST", "/v1/invoices/{id}/pay"): pay_invoice,
        ("POST", "/v1/invoices/{id}/void"): void_invoice,
        ("GET", "/v1/invoices/{id}/lines"): list_lines,
    }
    r.extra_apis[:] = [(m, u, replaced.get((m, u), f)) for m, u, f in r.extra_apis]
    r.extra_apis.append(("POST", "/v1/invoices/{id}/finalize", finalize_invoice))

    from aiohttp import web
    from aiohttp.typedefs import Handler
    from localstripe import server, webhooks

    async def unregister_webhook(request: web.Request) -> web.Response:
        webhooks._webhooks.pop(request.match_info["id"], None)
        return web.Response()

    server.app.router.add_delete("/_config/webhooks/{id}", unregister_webhook)

    # idempotent requests (/api/idempotent_requests): a POST's first 2xx answer is kept by its
    # Idempotency-Key and replayed for the same method, path and body; other parameters are a 400
    saved: dict[str, tuple[str, bytes, int, bytes]] = {}

    @web.middleware
    async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "DELETE" and request.path == "/_config/data":
            saved.clear()
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or request.path.startswith("/_config/"):
            return await handler(request)
        target, body = f"{request.method} {request.path}", await request.read()
        if key in saved:
            first_target, first_body, status, answer = saved[key]
            if (first_target, first_body) != (target, body):
                message = (
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request."
                )
                return web.json_response({"error": {"type": "idempotency_error", "message": message}}, status=400)
            replay = web.Response(body=answer, status=status, content_type="application/json")
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        response = await handler(request)
        if isinstance(response, web.Response) and 200 <= response.status < 300 and isinstance(response.body, bytes):
            saved[key] = (target, body, response.status, response.body)
        return response

    server.app.middlewares.append(idempotency)
    r._wattmeter_patched = True
    return server.app


def run_localstripe(port: int, host: str = "127.0.0.1") -> None:
    """Serve the patched localstripe in the foreground until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = patch_localstripe()
    from aiohttp import web

    web.run_app(app, host=host, port=port, print=lambda line: print(line, flush=True))


# --------------------------------------------------------------------------- CLI


def _run_both() -> int:
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with start_stripe_mock() as mock, start_localstripe() as local:
        print(f"stripe-mock {mock.url} (log {mock.log_path})", file=sys.stderr)
        print(f"localstripe {local.url} (log {local.log_path}); Ctrl-C stops both", file=sys.stderr)
        print(f"STRIPE_MOCK_URL={mock.url} LOCALSTRIPE_URL={local.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stopping and mock.alive() and local.alive():
                time.sleep(0.5)
        return 0 if stopping or (mock.alive() and local.alive()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.stripe_peers")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start stripe-mock and localstripe, print their URLs, wait for Ctrl-C")
    commands.add_parser("stripe-mock-path", help="install stripe-mock into the cache if missing; print its path")
    local = commands.add_parser("localstripe", help="serve the patched localstripe in the foreground")
    local.add_argument("--port", type=int, required=True)
    local.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        if args.command == "localstripe":
            run_localstripe(args.port, args.host)
            return 0
        if args.command == "stripe-mock-path":
            print(ensure_stripe_mock())
            return 0
        return _run_both()
    except PartUnavailable as exc:
        print(f"stripe_peers: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
