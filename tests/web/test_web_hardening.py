"""Hostile input against the web side, each refused the documented way (issue 15, "Hostile input" and
"Hardening"): an operator key reads no tenant's billing data; a period or day with a trailing newline
never reaches a header; nosniff and a strict CSP on every response; logout by POST from this site
only; no redirect built from Host; `{"error": ...}` on every error; the statement PDF fetches nothing
but the package's own assets; booleans and out-of-range instants refused as times, nothing written."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.leases.service import list_leases
from billing.statements import statement as statements
from billing.web.auth import NOT_TENANT_DATA
from billing.web.deps import CONTENT_SECURITY_POLICY
from tests.support.web_support import PERIOD, World, build_world, serve

API = "/api/v1"
FORBIDDEN_TENANT_DATA = {"error": NOT_TENANT_DATA}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("web-hardening")
    built = build_world(f"sqlite:///{root}/billing.db", root / "usage")
    yield built
    built.ledger.dispose()


# -- 1. an operator key: the fleet, not a tenant's billing data -------------------------------------


def test_an_operator_key_reads_no_tenants_billing_data(world: World) -> None:
    number = world.invoices["acme"]
    refused = [
        ("/invoices", {}),
        ("/invoices", {"tenant": "acme"}),
        (f"/invoices/{number}", {}),
        ("/invoices/WM-999999", {}),  # the same 403 whether it exists or not
        (f"/invoices/{world.draft_ids['acme']}", {}),
        (f"/statements/acme/{PERIOD}", {}),
        (f"/statements/acme/{PERIOD}.csv", {}),
        (f"/statements/acme/{PERIOD}.pdf", {}),
        (f"/statements/no-such-tenant/{PERIOD}", {}),
        ("/usage", {"tenant": "acme", "period": PERIOD}),
        ("/usage", {"period": PERIOD}),
        ("/usage/gpus", {"tenant": "acme", "period": PERIOD}),
    ]
    secrets = ["Acme", number, "GPU-A1", *(str(v) for v in (world.expected["acme"].allocated_gpu_ms,))]
    with world.client("operator") as client:
        for path, params in refused:
            response = client.get(API + path, params=params)
            assert response.status_code == 403, (path, params, response.text)
            assert response.json() == FORBIDDEN_TENANT_DATA, (path, response.text)
            assert response.headers["content-type"] == "application/json"
            for secret in secrets:
                assert secret not in response.text, (path, secret)
        # what an operator key is for: the fleet's yield report and the leases
        assert client.get(API + "/yield", params={"period": PERIOD}).status_code == 200
        leases = client.get(API + "/leases", params={"tenant": "acme"})
        assert leases.status_code == 200 and {x["tenant_id"] for x in leases.json()["leases"]} == {"acme"}
        assert client.get(API + "/finance/overview", params={"period": PERIOD}).status_code == 403
    with world.client("finance") as client:  # finance still reads every tenant
        assert client.get(API + f"/invoices/{number}").status_code == 200
        assert client.get(API + "/usage", params={"tenant": "acme", "period": PERIOD}).status_code == 200


# -- 2. a period or a day with a newline -------------------------------------------------------------


def test_a_period_with_a_newline_is_refused_before_it_reaches_a_header(world: World) -> None:
    """`$` matches before a trailing newline: "2026-11\\n" passed the portal's check, the PDF was rendered
    and the newline went into Content-Disposition, so uvicorn dropped the connection. Over a real socket."""
    with serve(world.app()) as base, httpx.Client(base_url=base, headers=world.auth("acme"), timeout=60) as http:
        for path in (
            f"/statements/{PERIOD}%0A.pdf",
            f"/statements/{PERIOD}%0A.csv",
            f"/statements/{PERIOD}%0A.html",
            f"/statements/{PERIOD}%0D%0AX-Evil:%201.pdf",
            "/days/2026-11-03%0A",
        ):
            response = http.get(path)
            assert response.status_code == 400, (path, response.status_code)
            assert "content-disposition" not in response.headers, path
            assert "is not a" in response.text, path
        for path in (f"{API}/statements/acme/{PERIOD}%0A.csv", f"{API}/statements/acme/{PERIOD}%0A"):
            response = http.get(path)
            assert response.status_code == 422 and response.json()["error"].startswith("period: "), path
        assert http.get(f"/statements/{PERIOD}.csv").status_code == 200  # the month itself still downloads


def test_the_file_name_never_carries_what_a_header_cannot() -> None:
    fake = statements.Statement("acme", "Acme", "USD", "UTC", '2026-11\r\n"x', 0, 1, [], [], [], 0)
    assert statements.file_stem(fake) == "statement-acme-2026-11_"


def test_a_next_target_with_control_characters_goes_home(world: World) -> None:
    with world.client() as client:
        for target in ("/\t/evil.example/", "/\n/evil.example", "/ok\x00"):
            response = client.post("/login", data={"key": world.keys["acme"], "next": target}, follow_redirects=False)
            assert response.status_code == 303 and response.headers["location"] == "/", target


# -- 3. nosniff and the CSP on every response ---------------------------------------------------------


def _assert_hardened(response: httpx.Response, what: str) -> None:
    assert response.headers.get("x-content-type-options") == "nosniff", what
    policy = response.headers.get("content-security-policy", "")
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, (what, policy)
    assert "unsafe-inline" not in policy and "script-src" not in policy, (what, policy)


def test_every_response_says_nosniff_and_has_a_strict_policy(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    number = world.invoices["acme"]
    with world.client("acme") as tenant, world.client() as anonymous, world.client("operator") as operator:
        responses = {
            "api json": tenant.get(API + "/invoices"),
            "api 401": anonymous.get(API + "/invoices"),
            "api 404": tenant.get(API + "/invoices/WM-999999"),
            "api 422": tenant.get(API + "/usage", params={"period": "2026-13"}),
            "api 403": operator.get(API + "/invoices"),
            "no route": tenant.get("/no/such/path"),
            "openapi": anonymous.get(API + "/openapi.json"),
            "login page": anonymous.get("/login"),
            "dashboard": tenant.get("/", params={"period": PERIOD}),
            "invoice page": tenant.get(f"/invoices/{number}"),
            "error page": tenant.get("/invoices/WM-999999"),
            "static css": anonymous.get("/static/style.css"),
            "static svg": anonymous.get("/static/favicon.svg"),
            "portal csv": tenant.get(f"/statements/{PERIOD}.csv"),
            "portal pdf": tenant.get(f"/statements/{PERIOD}.pdf"),
            "api csv": tenant.get(f"{API}/statements/acme/{PERIOD}.csv"),
            "api pdf": tenant.get(f"{API}/statements/acme/{PERIOD}.pdf"),
            "operator page": operator.get("/operator", params={"period": PERIOD}),
            "redirect": anonymous.get("/", follow_redirects=False),
            "405": anonymous.get("/logout"),
        }
        from billing.readmodel import queries

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom: a secret detail")

        monkeypatch.setattr(queries, "tenant_invoices", broken)
        responses["500"] = tenant.get(API + "/invoices")
    assert responses["500"].status_code == 500
    assert responses["500"].json() == {"error": "internal error"}  # one line, no trace, no detail
    assert responses["static css"].status_code == 200 and responses["portal pdf"].status_code == 200
    for what, response in responses.items():
        _assert_hardened(response, what)
        if response.headers.get("content-type", "").startswith("text/html"):
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, what
            assert not re.search(r"<style|\sstyle=", response.text), f"{what}: inline style the CSP refuses"


def test_the_inline_statement_html_has_its_own_policy_with_a_nonce(world: World) -> None:
    with world.client("acme") as client:
        first = client.get(f"/statements/{PERIOD}.html")
        second = client.get(f"/statements/{PERIOD}.html")
    assert first.status_code == 200 and first.headers["content-disposition"].startswith("inline;")
    _assert_hardened(first, "statement html")
    nonces = []
    for response in (first, second):
        policy = response.headers["content-security-policy"]
        found = re.search(r"style-src 'nonce-([A-Za-z0-9_-]{16,})'", policy)
        assert found, policy
        assert f'<style nonce="{found.group(1)}">' in response.text  # the one style element it allows
        assert "img-src data:;" in policy and "'self'" not in policy
        nonces.append(found.group(1))
    assert nonces[0] != nonces[1]  # a fresh nonce per response
    assert "nonce=" not in statements.render_html(_statement(world))  # the written file needs none


def _statement(world: World) -> statements.Statement:
    with world.ledger.transaction() as session:
        return statements.build_statement(session, "acme", PERIOD)


# -- 4. logout by POST, from this site only ------------------------------------------------------------


def test_logout_is_a_post_from_this_site(world: World) -> None:
    cookie = {"Cookie": f"wattmeter_key={world.keys['acme']}"}
    with world.client(**cookie) as client:
        by_get = client.get("/logout", follow_redirects=False)
        assert by_get.status_code == 405 and by_get.json() == {"error": "method not allowed"}
        assert by_get.headers["allow"] == "POST" and "set-cookie" not in by_get.headers
        for header in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            forged = client.post("/logout", headers=header, follow_redirects=False)
            assert forged.status_code == 403 and "set-cookie" not in forged.headers, header
            assert "another site" in forged.text and forged.headers["content-type"].startswith("text/html")
        own = client.post("/logout", headers={"Origin": str(client.base_url)}, follow_redirects=False)
        assert own.status_code == 303 and own.headers["location"] == "/login"
        assert own.headers["set-cookie"].startswith('wattmeter_key=""') and "Max-Age=0" in own.headers["set-cookie"]
    with world.client("acme") as client:
        page = client.get("/", params={"period": PERIOD}).text
    assert '<form method="post" action="/logout">' in page and 'href="/logout"' not in page


# -- 5 and 6. no redirect from Host; {"error": ...} on every error --------------------------------------


def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_host_sent(world: World) -> None:
    with world.client("acme", host="evil.example") as client:
        for path in (API + "/invoices/", API + "/usage/gpus/", "/login/", "/operator/", "/static/"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 404, (path, response.status_code)
            assert "location" not in response.headers and "evil" not in response.text, path
            assert response.json() == {"error": "not found"}, path


def test_every_error_is_one_line_of_json(world: World) -> None:
    with world.client("operator") as client:
        cases = [
            (client.get("/no/such/page"), 404, "not found"),
            (client.get(API + "/nothing"), 404, "not found"),
            (client.get("/static/nothing.css"), 404, "not found"),
            (client.delete(API + "/invoices"), 405, "method not allowed"),
            (client.put(API + "/leases"), 405, "method not allowed"),
            (
                client.post(API + "/leases", content=b"{not json", headers={"content-type": "application/json"}),
                422,
                None,
            ),
        ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and "\n" not in body["error"] and body["error"], body
        if message is not None:
            assert body["error"] == message
    assert cases[3][0].headers["allow"] == "GET"


# -- 7. WeasyPrint fetches nothing but the package's own assets ----------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Recorder.hits.append(self.path)
        body = b"body { background: red }" if self.path.endswith(".css") else b"GIF89a"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


_OPENED: list[str] = []
_WATCHING = threading.Event()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _WATCHING.is_set() and args and isinstance(args[0], str | bytes | Path):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


def test_the_statement_pdf_fetches_no_url_and_no_local_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.css"
    secret.write_text("body { background: red }")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    html = f"""<!doctype html><html><head>
      <link rel="stylesheet" href="{base}/x.css"><link rel="stylesheet" href="file:///etc/passwd">
      <link rel="stylesheet" href="{secret.as_uri()}"><link rel="stylesheet" href="file://127.0.0.1/etc/passwd">
      <style>@import url("{base}/imported.css"); body {{ background: url("{base}/bg.gif") }}</style>
      </head><body><img src="{base}/x"><img src="file:///etc/passwd"><img src="../../../../etc/passwd">
      <img src="favicon.svg"><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><p>statement</p></body></html>"""
    _Recorder.hits.clear()
    _OPENED.clear()
    _WATCHING.set()
    try:
        pdf = statements.html_to_pdf(html)
    finally:
        _WATCHING.clear()
        server.shutdown()
        server.server_close()
    assert pdf.startswith(b"%PDF-")
    assert _Recorder.hits == []  # no request reached the loopback server
    assert not [p for p in _OPENED if "passwd" in p or "secret.css" in p], _OPENED
    assert any(p.endswith("favicon.svg") for p in _OPENED), _OPENED  # its own asset is still served


def test_the_fetcher_serves_data_and_own_assets_only() -> None:
    fetcher: Any = statements.asset_fetcher()
    own = fetcher.fetch((statements.ASSETS / "favicon.svg").as_uri())
    assert b"<svg" in own.read()
    own.close()
    data = fetcher.fetch("data:text/plain;base64,aGk=")
    assert data.read() == b"hi"
    data.close()
    outside = statements.ASSETS / ".." / "templates" / "base.html"
    for url in (
        "http://127.0.0.1:9/x",
        "https://example.com/",
        "ftp://example.com/x",
        "file:///etc/passwd",
        outside.as_uri(),
        (statements.ASSETS / "nothing.css").as_uri(),
        "file://example.com/etc/passwd",
    ):
        with pytest.raises(ValueError, match="only wattmeter's own assets"):
            fetcher.fetch(url)


# -- 8. a time is a time, within 1970..9999 -------------------------------------------------------------


def test_booleans_and_out_of_range_instants_are_refused_and_nothing_is_written(world: World) -> None:
    def count() -> int:
        with world.ledger.transaction() as session:
            return len(list_leases(session))

    before = count()
    lease = {"tenant_id": "acme", "gpu_uuid": "GPU-TIME"}
    cases = [
        ({**lease, "start": True}, "start: must be an ISO 8601 time (no offset: UTC) or integer ms, not a bool"),
        ({**lease, "start": False}, "start: must be an ISO 8601 time"),
        ({**lease, "start": 1.0}, "start: must be an ISO 8601 time (no offset: UTC) or integer ms, not a float"),
        ({**lease, "start": [1]}, "start: must be an ISO 8601 time"),
        ({**lease, "start": 9_999_999_999_999_999}, "start: 9999999999999999 is outside 1970-01-01"),
        ({**lease, "start": 0, "end": 253_402_300_800_000}, "end: 253402300800000 is outside"),
        ({**lease, "start": 0, "end": True}, "end: must be an ISO 8601 time"),
        ({**lease, "start": -1}, "start: "),
    ]
    with world.client("operator") as client:
        for body, message in cases:
            response = client.post(API + "/leases", json=body)
            assert response.status_code == 422, (body, response.text)
            where, _, what = message.partition(": ")
            error = response.json()["error"]
            assert error.startswith(where + ": ") and what in error, (body, response.text)
        ended = client.post(API + "/leases/lease-acme-GPU-A1/end", json={"end": True})
        assert ended.status_code == 422 and ended.json()["error"].startswith("end: must be an ISO 8601 time")
        far = client.get(API + "/leases", params={"active_at": "253402300800000"})
        assert far.status_code == 422 and far.json()["error"].startswith("active_at: the time 253402300800000")
        assert count() == before
        with world.ledger.transaction() as session:
            assert list_leases(session, gpu_uuid="GPU-A1")[0].end_ms is None
        # the bound is 9999, not 3000: the last day of year 9999 is a time, and it lists
        edge = client.post(API + "/leases", json={**lease, "start": "9999-12-30T00:00:00Z", "end": 253_402_300_799_999})
        assert edge.status_code == 201, edge.text
        assert edge.json()["end"] == "9999-12-31T23:59:59.999Z"
        listed = client.get(API + "/leases", params={"gpu": "GPU-TIME"})
        assert listed.status_code == 200 and len(listed.json()["leases"]) == 1
    with world.client("acme") as client:
        usage = client.get(API + "/usage", params={"from": "9999-12-31", "to": "10000-01-01"})
        assert usage.status_code == 422 and usage.json()["error"].startswith("to: must be an ISO 8601")
        usage = client.get(API + "/usage", params={"from": "9999-12-31", "to": "253402300800000"})
        assert usage.status_code == 422 and usage.json()["error"].startswith("to: the time 253402300800000")


# -- the portal renders under its policy (Debian's Chromium) --------------------------------------------


def test_every_page_renders_under_the_strict_policy(chromium: Any, world: World) -> None:
    """No page asks for anything the CSP refuses (Chromium reports each refusal on the console), and the
    styles moved out of the templates apply: the month's split bars, the yield bars, finance's close
    steps, the statement's own inline style (by nonce)."""
    from tests.support.browser_support import LAPTOP

    with serve(world.app()) as base:
        context = chromium.new_context(viewport=LAPTOP, locale="en-US")
        page = context.new_page()
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        try:
            page.goto(f"{base}/login")
            page.fill("#key", world.keys["finance"])
            page.click("form[action='/login'] button[type=submit]")
            page.wait_for_url(f"{base}/")
            computed = "(e, p) => getComputedStyle(e).getPropertyValue(p)"
            pages = {
                f"/?tenant=acme&period={PERIOD}": (".split rect.valley", "fill", "rgb(47, 158, 120)"),
                "/days/2026-11-03?tenant=acme": ("section.card.spaced", "margin-top", "17.6px"),
                f"/invoices/{world.invoices['acme']}": (".grid-2.spaced-below", "margin-bottom", "17.6px"),
                "/invoices/WM-999999": (".error-card", "max-width", "560px"),
                f"/finance?period={PERIOD}": ("input[type=month]", "border-radius", "8px"),
                f"/operator?period={PERIOD}": (".yield-bars .sold", "fill", "rgb(47, 158, 120)"),
                f"/statements/{PERIOD}.html?tenant=acme": (".kpis", "display", "grid"),
            }
            for path, (selector, prop, value) in pages.items():
                page.goto(base + path)
                assert page.eval_on_selector(selector, computed, prop) == value, (path, selector)
            assert page.locator("link[rel=stylesheet]").count() == 0  # the statement is self-contained
            assert refused == [], refused
        finally:
            context.close()
