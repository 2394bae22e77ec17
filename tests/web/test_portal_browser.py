"""The tenant portal in a real browser: Debian's Chromium (apt) driven by Playwright, against the app
served by uvicorn over the web test world (tests/support/web_support.py).

A tenant signs in with its key (a wrong key first: a clear message), sees its month with the right
totals (the chart's and the key figures' numbers equal the rollup's and the invoice's), opens a day
by hour, opens its invoice (each line, the usage behind it), downloads the statement CSV (checked
number by number) and PDF, meets the same 404 page for another tenant's invoice as for a missing
one, and signs out. The same on a phone-sized viewport, with nothing wider than the screen.
Finance and operator keys land on their way to /finance and /operator, and open them (the yield report).

Screenshots of every page: test-artifacts/screenshots/<test>/ (see tests/support/browser_support.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.readmodel.queries import gpu_hours, invoice_detail, kwh
from billing.statements.formatting import money, quantity
from billing.statements.statement import parse_csv
from tests.support.browser_support import LAPTOP, PHONE, Screenshots
from tests.support.web_support import PERIOD, World, build_world, serve


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    root = tmp_path_factory.mktemp("portal")
    world = build_world(f"sqlite:///{root}/billing.db", root / "usage")
    with serve(world.app()) as base_url:
        yield world, base_url


def sign_in(page: Any, base_url: str, key: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("#key", key)
    page.click("form[action='/login'] button[type=submit]")


def no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_tenant_signs_in_sees_its_month_opens_an_invoice_and_downloads_the_statement(
    chromium: Any, screenshots: Screenshots, portal: tuple[World, str], tmp_path: Path
) -> None:
    world, base = portal
    number = world.invoices["acme"]
    expected = world.expected["acme"]
    with world.ledger.transaction() as session:
        invoice = invoice_detail(session, number)
    gpu_lines = [line for line in invoice.lines if line.kind == "gpu_time"]
    energy_lines = [line for line in invoice.lines if line.kind == "energy"]

    context = chromium.new_context(viewport=LAPTOP, locale="en-US", accept_downloads=True)
    page = context.new_page()
    try:
        # not signed in: the portal sends you to the login form
        page.goto(f"{base}/")
        assert page.url.startswith(f"{base}/login")
        screenshots.take(page, "login")

        # a wrong key: a clear message, no trace, no cookie
        sign_in(page, base, "wm_0000000000000000_not-a-real-secret")
        assert "not accepted" in page.inner_text("#login-error")
        assert "Traceback" not in page.content() and not context.cookies()
        screenshots.take(page, "login-wrong-key")

        sign_in(page, base, world.keys["acme"])
        cookie = next(c for c in context.cookies() if c["name"] == "wattmeter_key")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        # the period picker: choose the invoiced month
        page.select_option("#period", PERIOD)
        page.click(".period-picker form button[type=submit]")
        page.wait_for_url(f"**/?period={PERIOD}")
        assert page.inner_text("#page-title") == "November 2026"
        assert re.fullmatch(r"as of \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", page.inner_text("[data-testid=as-of]"))

        # the key figures: the rollup's exact quantities, formatted; the invoice's total
        gpu_value = page.locator("#kpi-gpu-hours .value")
        assert int(gpu_value.get_attribute("data-ms")) == expected.allocated_gpu_ms
        assert Decimal(gpu_value.get_attribute("data-exact")) == gpu_hours(expected.allocated_gpu_ms)
        assert gpu_value.inner_text() == quantity(gpu_hours(expected.allocated_gpu_ms), "GPU-h")
        energy_value = page.locator("#kpi-energy .value")
        assert int(energy_value.get_attribute("data-mj")) == expected.energy_mj
        assert energy_value.inner_text() == quantity(kwh(expected.energy_mj), "kWh")
        assert page.inner_text("#kpi-invoiced .value") == money(invoice.invoice.total, "USD")

        # the chart: its total and each period's equal the invoice's GPU-time lines (6 places)
        chart = page.locator("svg#usage-gpu-hours")
        assert chart.get_attribute("role") == "img"
        total = chart.locator(".chart-total")
        assert Decimal(total.get_attribute("data-total")) == sum((line.quantity for line in gpu_lines), Decimal(0))
        assert total.text_content() == f"Total {quantity(gpu_hours(expected.allocated_gpu_ms), 'GPU-h')}"
        for name in ("peak", "valley"):
            legend = chart.locator(f"text.legend[data-series='{name}']")
            shown = Decimal(legend.get_attribute("data-total"))
            assert shown == sum((line.quantity for line in gpu_lines if line.tou_period == name), Decimal(0)), name
        bars = chart.locator("g.bar")
        assert bars.count() == 30
        assert sum(Decimal(bars.nth(i).get_attribute("data-total")) for i in range(30)) == gpu_hours(
            expected.allocated_gpu_ms
        )
        energy_chart = page.locator("svg#usage-energy .chart-total")
        assert Decimal(energy_chart.get_attribute("data-total")) == kwh(expected.energy_mj)
        assert sum(line.quantity_base for line in energy_lines) == expected.energy_mj
        # the per-GPU table
        rows = page.locator("#gpu-table tbody tr")
        assert sorted(rows.nth(i).get_attribute("data-gpu") for i in range(rows.count())) == sorted(expected.gpus)
        screenshots.take(page, "dashboard")

        # a day by hour: New York's 1 November has 25 hours
        page.locator("svg#usage-gpu-hours a").first.click()
        page.wait_for_url("**/days/2026-11-01")
        assert "25 hours" in page.inner_text(".page-head .sub")
        screenshots.take(page, "day")
        page.go_back()

        # the invoice, each line with the usage behind it
        page.click(f"#invoice-list a:text-is('{number}')")
        page.wait_for_url(f"**/invoices/{number}")
        assert number in page.inner_text("#invoice-title")
        assert page.inner_text("#invoice-total") == money(invoice.invoice.total, "USD")
        shown_lines = page.locator("#invoice-lines tbody tr[data-position]")
        assert shown_lines.count() == len(invoice.lines)
        for i, line in enumerate(invoice.lines):
            assert Decimal(shown_lines.nth(i).locator("td").last.get_attribute("data-exact")) == line.amount
        usage = page.locator("#invoice-lines tr.usage-row")
        assert usage.count() == len(gpu_lines) + len(energy_lines)
        usage.first.locator("summary").click()
        assert "GPU-" in usage.first.locator("table").inner_text()
        screenshots.take(page, "invoice")

        # the statement CSV through the browser's download, and its numbers
        with page.expect_download() as caught:
            page.click("#invoice-download-csv")
        download = caught.value
        assert download.suggested_filename == f"statement-acme-{PERIOD}.csv"
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        csv = parse_csv(path.read_text())
        totals = {row["field"]: row["value"] for row in csv["totals"]}
        assert int(totals["gpu_ms"]) == expected.allocated_gpu_ms
        assert int(totals["energy_mj"]) == expected.energy_mj
        assert Decimal(totals["gpu_hours"]) == gpu_hours(expected.allocated_gpu_ms)
        for name in ("subtotal", "tax", "total", "amount_due"):
            assert Decimal(totals[name]) == getattr(invoice.invoice, name), name
        assert [(row["kind"], Decimal(row["amount"])) for row in csv["invoice_line"]] == [
            (line.kind, line.amount) for line in invoice.lines
        ]
        assert sum(int(row["gpu_ms"]) for row in csv["usage_day"]) == expected.allocated_gpu_ms
        assert {row["gpu_uuid"] for row in csv["usage_gpu"]} == expected.gpus
        with page.expect_download() as caught:
            page.click("#invoice-download-pdf")
        pdf = tmp_path / "statement.pdf"
        caught.value.save_as(pdf)
        assert pdf.read_bytes().startswith(b"%PDF-")

        # another tenant's invoice and a missing one: the same page
        page.goto(f"{base}/invoices/{world.invoices['globex']}")
        foreign = page.inner_text("main")
        screenshots.take(page, "not-found")
        page.goto(f"{base}/invoices/WM-999999")
        assert page.inner_text("main") == foreign and "Not found" in foreign
        assert "Globex" not in page.content()

        # signing out drops the key
        page.click("form[action='/logout'] button")
        page.wait_for_url("**/login")
        assert not [c for c in context.cookies() if c["name"] == "wattmeter_key"]
        page.goto(f"{base}/")
        assert page.url.startswith(f"{base}/login")
    finally:
        context.close()


def test_the_portal_on_a_phone(chromium: Any, screenshots: Screenshots, portal: tuple[World, str]) -> None:
    world, base = portal
    context = chromium.new_context(viewport=PHONE, locale="en-US", is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        sign_in(page, base, world.keys["acme"])
        page.goto(f"{base}/?period={PERIOD}")
        assert page.locator("svg#usage-gpu-hours").is_visible()
        assert no_horizontal_scroll(page)
        screenshots.take(page, "phone-dashboard")
        page.goto(f"{base}/invoices/{world.invoices['acme']}")
        assert no_horizontal_scroll(page)
        screenshots.take(page, "phone-invoice")
        page.goto(f"{base}/login")  # signed in: straight to the portal
        assert not page.url.endswith("/login")
    finally:
        context.close()


def test_finance_and_operator_keys_are_shown_their_pages(
    chromium: Any, screenshots: Screenshots, portal: tuple[World, str]
) -> None:
    world, base = portal
    context = chromium.new_context(viewport=LAPTOP, locale="de-DE")
    page = context.new_page()
    try:
        sign_in(page, base, world.keys["finance"])
        assert page.get_attribute("#go-finance", "href") == "/finance"
        screenshots.take(page, "finance-home")
        with page.expect_response(f"{base}/finance") as opened:
            page.click("#go-finance")
        assert opened.value.status == 200
        screenshots.take(page, "finance-overview")
        page.goto(f"{base}/")
        page.click("a:text-is('Globex Handels GmbH')")
        page.goto(f"{base}/?tenant=globex&period={PERIOD}")
        # German: the browser's locale; the tenant's currency
        assert page.inner_text("#kpi-invoiced .value") == money(
            Decimal(page.get_attribute("#kpi-invoiced .value", "data-exact")), "USD", "de_DE"
        )
        assert "," in page.inner_text("#kpi-gpu-hours .value")
        screenshots.take(page, "finance-tenant-de")
        context.clear_cookies()
        sign_in(page, base, world.keys["operator"])
        assert page.get_attribute("#go-operator", "href") == "/operator"
        screenshots.take(page, "operator-home")
        # the operator opens the yield report (helper pages: billing/web/portal/operator.py)
        with page.expect_response(f"{base}/operator") as opened:
            page.click("#go-operator")
        assert opened.value.status == 200 and "Traceback" not in page.content()
        screenshots.take(page, "operator-yield")
    finally:
        context.close()


def test_portal_pages_are_scoped_by_auth(portal: tuple[World, str]) -> None:
    """In process (no browser): every portal page asked for another tenant answers the same 404 page
    as for a tenant that does not exist, with nothing of the other tenant in it; no key goes to the
    login form; a bad month is a 400 page; a login form posted from another site is refused."""
    world, _ = portal
    with world.client() as anonymous:
        for path in ("/", f"/invoices/{world.invoices['acme']}", f"/statements/{PERIOD}.csv", "/days/2026-11-01"):
            response = anonymous.get(path, follow_redirects=False)
            assert response.status_code == 303 and response.headers["location"].startswith("/login"), path
        response = anonymous.post(
            "/login", data={"key": world.keys["acme"]}, headers={"Origin": "https://evil.example"}
        )
        assert response.status_code == 403 and "wattmeter_key" not in response.headers.get("set-cookie", "")
        response = anonymous.post("/login", data={"key": world.keys["revoked"]})
        assert response.status_code == 401 and "not accepted" in response.text
        response = anonymous.post(
            "/login", data={"key": world.keys["acme"], "next": "//evil.example/"}, follow_redirects=False
        )
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert "httponly" in response.headers["set-cookie"].lower()
        assert "samesite=strict" in response.headers["set-cookie"].lower()

    with world.client("acme") as client:
        missing = client.get("/?tenant=nobody")
        assert missing.status_code == 404
        for other in world.others("acme"):
            number = world.invoices[other.tenant_id]
            for path in (
                f"/?tenant={other.tenant_id}",
                f"/?tenant={other.tenant_id}&period={PERIOD}",
                f"/days/2026-11-05?tenant={other.tenant_id}",
                f"/statements/{PERIOD}.csv?tenant={other.tenant_id}",
                f"/statements/{PERIOD}.pdf?tenant={other.tenant_id}",
                f"/invoices/{number}",
                f"/invoices/{number.lower()}",
                f"/invoices/{world.draft_ids.get('acme', 0)}",
            ):
                response = client.get(path)
                assert response.status_code == 404, path
                assert response.text == missing.text, path
                for leak in (other.name, other.tenant_id, other.timezone, number):
                    assert leak not in response.text, (path, leak)
        assert client.get("/?period=2026-13").status_code == 400
        assert client.get("/days/2026-02-30").status_code == 400
        assert client.get(f"/statements/{PERIOD}.xls").status_code == 404
        own = client.get(f"/statements/{PERIOD}.csv")
        assert own.status_code == 200 and own.headers["content-type"].startswith("text/csv")
        assert 'filename="statement-acme-2026-11.csv"' in own.headers["content-disposition"]
        # a tenant never sees its draft (December's), finance does
        assert client.get(f"/invoices/{world.draft_ids['acme']}").status_code == 404
    with world.client("finance") as finance:
        assert finance.get(f"/invoices/{world.draft_ids['acme']}").status_code == 200
        assert finance.get("/?tenant=globex").status_code == 200
    with world.client("operator") as operator:
        assert operator.get(f"/invoices/{world.invoices['acme']}").status_code == 404
        assert operator.get(f"/statements/{PERIOD}.csv?tenant=acme").status_code == 404
