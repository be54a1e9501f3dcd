"""The README's dashboard pictures, taken with headless Chromium from a running demo.

``studyin-analytics demo --screenshots docs/img`` plays the history, serves the API and the
dashboard (:mod:`.explore`), signs in through the dashboard's sign-in links as the top learner and
as staff, waits until every view has loaded, and saves ``dashboard-learner.png`` and
``dashboard-staff.png`` (full pages), then, from the staff page, one picture per staff analysis
view: ``dashboard-experiment.png`` (the experiment's variants, lift and sample size),
``dashboard-funnel.png`` (the first saved pathway funnel) and ``dashboard-retention.png`` (the
weekly retention triangle). Playwright is a development dependency (``make demo`` installs it);
Chromium is the system's (``make system-deps``), or ``STUDYIN_DEMO_CHROMIUM``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 1000}
VIEWS = {"learner": "dashboard-learner.png", "staff": "dashboard-staff.png"}
SETTLE_MS = {"learner": 2_000, "staff": 8_000}
"""After the page is ready: charts drawn; for staff, a few seconds of the live events-per-second feed."""
STAFF_VIEWS = {
    "dashboard-experiment.png": "#experiments",
    "dashboard-funnel.png": ".card:has(#chart-funnel)",
    "dashboard-retention.png": ".card:has(#retention)",
}
"""The staff page's analysis views, each pictured alone (the card that holds it)."""
STAFF_READY = ("body[data-analysis='1']", "#experiments[data-ready]")
"""The funnel and retention, and the experiment, have been drawn."""


def chromium() -> str:
    return os.environ.get("STUDYIN_DEMO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def missing_browser() -> str | None:
    """Why the pictures cannot be taken (no Chromium, no Playwright), said before the history plays."""
    path = chromium()
    if not os.access(path, os.X_OK):
        return (
            f"--screenshots needs Chromium, and {path} is not an executable: install it (`make system-deps` "
            "as root, or `apt-get install chromium`) or set STUDYIN_DEMO_CHROMIUM to its path"
        )
    try:
        import playwright.async_api  # noqa: F401  (a development dependency)
    except ImportError:
        return "--screenshots needs Playwright's Python package: pip install -e '.[dev]' (make install)"
    return None


async def take_screenshots(base: str, tokens: dict[str, str], directory: Path) -> list[Path]:
    """One full-page picture per view (``tokens``: view -> bearer token) into ``directory``, and the
    staff page's analysis views."""
    from playwright.async_api import async_playwright

    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  (once, before the browser starts)
    taken: list[Path] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            for view, name in VIEWS.items():
                page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
                await page.goto(f"{base}/dashboard#token={tokens[view]}")
                await page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                if view == "staff":
                    for ready in STAFF_READY:
                        await page.wait_for_selector(ready, state="attached", timeout=60_000)
                await page.wait_for_timeout(SETTLE_MS[view])
                path = directory / name
                await page.screenshot(path=str(path), full_page=True)
                taken.append(path)
                if view == "staff":
                    taken += await _staff_views(page, directory)
                await page.close()
        finally:
            await browser.close()
    return taken


async def _staff_views(page: Any, directory: Path) -> list[Path]:
    taken = []
    for name, selector in STAFF_VIEWS.items():
        path = directory / name
        await page.locator(selector).first.screenshot(path=str(path))
        taken.append(path)
    return taken
