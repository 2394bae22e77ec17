"""Browser tests' harness: Debian's Chromium (installed by apt, `make system-deps`) driven by Playwright
for Python, and screenshots kept as test artifacts.

Playwright never downloads a browser here: it launches `/usr/bin/chromium` through
`executable_path`. If Chromium is missing or cannot start, the test FAILS and says what is missing
(a skipped browser test would hide a portal nobody checked).

Screenshots go to `test-artifacts/screenshots/<test>/<page>.png` under the repository (git ignores
`test-artifacts/`), or under `$WATTMETER_TEST_ARTIFACTS/screenshots/` when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}  # an iPhone 12-14 sized viewport


def artifacts_root() -> Path:
    return Path(os.environ.get("WATTMETER_TEST_ARTIFACTS") or REPO / "test-artifacts")


def _missing_chromium() -> str:
    return (
        f"Debian's Chromium is missing: {CHROMIUM} does not exist. Install it with `make browser-deps` "
        "(apt-get install chromium); the browser tests never download a browser"
    )


def launch_chromium(playwright: Any) -> Any:
    """Chromium from apt, or pytest.fail naming what is missing (never a skip)."""
    if not CHROMIUM.exists():
        pytest.fail(_missing_chromium(), pytrace=False)
    try:
        return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
    except Exception as exc:  # playwright.Error: a library or the display stack is missing
        lines = [
            line.strip()[:300]
            for line in str(exc).splitlines()
            if line.strip() and "<launching>" not in line and not set(line.strip()) <= {"=", "-"}
        ]
        first = " | ".join(lines[:8]) or type(exc).__name__  # the error and the browser's own log lines
        hint = ""
        ldd = shutil.which("ldd")
        if ldd:
            import subprocess

            out = subprocess.run([ldd, str(_real_binary())], capture_output=True, text=True).stdout
            absent = sorted({line.split()[0] for line in out.splitlines() if "not found" in line})
            if absent:
                hint = f"; shared libraries not found: {', '.join(absent)} (apt-get install chromium pulls them in)"
        pytest.fail(f"Chromium at {CHROMIUM} cannot start: {first}{hint}", pytrace=False)


def _real_binary() -> Path:
    """/usr/bin/chromium is a shell wrapper on Debian; the binary is /usr/lib/chromium/chromium."""
    candidate = Path("/usr/lib/chromium/chromium")
    return candidate if candidate.exists() else CHROMIUM


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One Chromium for the session (each test opens its own context: its own cookies)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - a dev dependency
        pytest.fail(f"the playwright package is missing ({exc}): pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


class Screenshots:
    """Full-page screenshots of one test, as test-artifacts/screenshots/<test>/<NN>-<page>.png."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []

    def take(self, page: Any, name: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
        path = self.folder / f"{len(self.taken) + 1:02d}-{safe}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Screenshots:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    folder = artifacts_root() / "screenshots" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return Screenshots(folder)
