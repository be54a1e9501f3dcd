"""Helpers of the dashboard's browser tests (a real headless Chromium; the fixture is in
tests/aggregator/api/conftest.py)."""

from __future__ import annotations

import shutil

from playwright.async_api import Page

from tests.support import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def csp_violations(page: Page) -> list[str]:
    """Console messages of the page that report a Content-Security-Policy violation (live list)."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


async def sign_in(page: Page, base: str, bearer: str) -> None:
    await page.goto(f"{base}/dashboard")
    await page.fill("#token", bearer)
    await page.click("#token-form button")
    await page.wait_for_selector("body[data-ready='1']", timeout=15_000)


DASHBOARD_LEARNER = "dash-learner-0001"
DASHBOARD_STAFF = "dash-staff-0002"
DASHBOARD_OTHER = "dash-other-0003"
