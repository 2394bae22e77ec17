"""The operator's yield report and finance's month at a glance in a real browser: Playwright drives
Debian's Chromium (tests/support/browser_support.py: never a download) against the app served by uvicorn over
the web tests' world. An operator signs in with its key, opens the yield report, reads the figures
and downloads the CSV; the numbers on the page are the report's. The same page on a phone has
nothing wider than the screen. Finance opens /finance. Screenshots are kept under
test-artifacts/screenshots/<test>/."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from billing.reports.service import yield_report
from billing.reports.yield_report import csv_text
from billing.statements.formatting import money
from tests.support.browser_support import LAPTOP, PHONE, Screenshots
from tests.support.web_support import PERIOD, World, build_world, serve


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    root = tmp_path_factory.mktemp("operator")
    world = build_world(f"sqlite:///{root}/billing.db", root / "usage")
    with serve(world.app()) as base_url:
        yield world, base_url
    world.ledger.dispose()


def sign_in(page: Any, base_url: str, key: str, then: str) -> None:
    """Open `then` without a key: the portal sends the browser to /login and back after."""
    page.goto(f"{base_url}{then}")
    assert "/login" in page.url
    page.fill("#key", key)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state()


def fits_the_screen(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_an_operator_opens_the_yield_report(chromium: Any, screenshots: Screenshots, site: tuple[World, str]) -> None:
    world, base = site
    report = yield_report(world.ledger, PERIOD)
    revenue = report.fleet.revenue_of("USD")
    context = chromium.new_context(viewport=LAPTOP, locale="en-US", accept_downloads=True)
    page = context.new_page()
    try:
        sign_in(page, base, world.keys["operator"], f"/operator?period={PERIOD}")
        assert page.url == f"{base}/operator?period={PERIOD}"
        assert page.inner_text("h1") == f"Fleet yield · {PERIOD}"
        screenshots.take(page, "operator-yield")
        # the figures on the page are the report's
        shown = page.locator("[data-testid=fleet-revenue-USD]")
        assert Decimal(shown.get_attribute("data-value")) == revenue
        assert shown.inner_text() == money(revenue, "USD", "en_US")
        fleet_row = page.locator("table.yield tfoot tr")
        assert fleet_row.locator("td[data-label='Revenue USD']").inner_text() == money(revenue, "USD", "en_US")
        assert fleet_row.locator("td[data-label='GPUs']").inner_text() == str(report.fleet.gpus)
        hours = Decimal(report.fleet.available_ms) / Decimal(3_600_000)
        assert page.inner_text("[data-testid=fleet-available]") == f"{hours:,.2f}"
        models = page.locator("table.yield tbody tr").evaluate_all("rows => rows.map(r => r.dataset.model)")
        assert models == [row.model for row in report.models]
        assert page.locator(".yield-bars li").count() == len(report.models) + 1  # one bar per model, then the fleet
        # the CSV behind the link is the report's
        with page.expect_download() as download:
            page.click("a[download]")
        path = download.value.path()
        assert download.value.suggested_filename == f"wattmeter-yield-{PERIOD}.csv"
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == csv_text(report)
        # the month before: nothing metered, nothing invoiced, and still a page
        page.click("a[aria-label='Previous month']")
        page.wait_for_load_state()
        assert page.inner_text("h1") == "Fleet yield · 2026-10"
        screenshots.take(page, "operator-yield-empty-month")
    finally:
        context.close()


def test_the_yield_report_on_a_phone(chromium: Any, screenshots: Screenshots, site: tuple[World, str]) -> None:
    world, base = site
    context = chromium.new_context(viewport=PHONE, locale="en-US", is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        sign_in(page, base, world.keys["operator"], f"/operator?period={PERIOD}")
        assert page.locator("[data-testid=fleet-valley-share]").is_visible()
        assert page.locator("table.yield thead").is_hidden()  # the table stacks: one card per model
        assert fits_the_screen(page)
        screenshots.take(page, "operator-yield-phone")
    finally:
        context.close()


def test_finance_opens_the_month_at_a_glance(chromium: Any, screenshots: Screenshots, site: tuple[World, str]) -> None:
    world, base = site
    context = chromium.new_context(viewport=LAPTOP, locale="en-US")
    page = context.new_page()
    try:
        sign_in(page, base, world.keys["finance"], f"/finance?period={PERIOD}")
        assert page.inner_text("[data-testid=invoice-count]") == str(len(world.invoices))
        assert page.locator("#recon-tenants tbody tr").count() == len(world.invoices)
        screenshots.take(page, "finance-overview")
        page.click("nav a:text-is('Fleet yield')")
        page.wait_for_load_state()
        assert page.url.startswith(f"{base}/operator")
        screenshots.take(page, "finance-fleet-yield")
    finally:
        context.close()
