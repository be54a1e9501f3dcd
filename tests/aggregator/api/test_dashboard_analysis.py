"""The staff dashboard's funnel chart and retention triangle, in a real headless Chromium.

Learner paths of the last weeks are stored; the page asks the API for the pathway funnel and
the weekly retention table and draws them: the funnel's bars carry the API's counts, hidden
cells are drawn as hidden (never as numbers), and the page runs under its CSP. Screenshot:
``test-artifacts/dashboard-analysis.png``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from playwright.async_api import Browser, Page

from studyin_analytics.aggregator.cli.settings import Settings
from tests.support.analysis.loading import moved, store_events, until_loaded
from tests.support.analysis.reference import US, learner_paths
from tests.support.api import STAFF, served, token
from tests.support.browser import ARTIFACTS, csp_violations, sign_in


async def test_staff_sees_the_funnel_and_the_retention_triangle(migrated: Settings, browser: Browser) -> None:
    events = learner_paths(31, learners=120, weeks=6)
    now = datetime.now(UTC) - timedelta(hours=1)
    events = moved(events, int(now.timestamp() * US) - max(e.time_us for e in events))
    events = await store_events(migrated, events)
    async with served(migrated.with_overrides(min_cohort_size=5)) as (base, app):
        await until_loaded(app.state.analysis, len(events))
        page = await browser.new_page(viewport={"width": 1280, "height": 1600})
        try:
            await _check(page, base, migrated)
        finally:
            await page.close()


async def _check(page: Page, base: str, migrated: Settings) -> None:
    violations = csp_violations(page)
    await sign_in(page, base, token(migrated, STAFF, roles=["staff"]))
    await page.wait_for_selector("body[data-analysis='1']", timeout=20_000)
    assert await page.get_attribute("#chart-funnel", "data-steps") == "5"
    learners = json.loads(await page.get_attribute("#chart-funnel", "data-learners") or "[]")
    assert learners[0] is not None and learners[0] >= 5
    assert all(n is None or n <= learners[0] for n in learners)
    assert await page.locator("#chart-funnel canvas").count() >= 1
    assert "session_start" in await page.inner_text("#funnel-note")
    assert int(await page.get_attribute("#retention", "data-cohorts") or 0) == 8
    rows = page.locator("#retention tbody tr")
    assert await rows.count() == 8
    # A triangle: the newest cohort has no later week, the oldest seven.
    assert await rows.nth(0).locator("td").count() == 2 + 7
    assert await rows.nth(7).locator("td").count() == 2
    text = await page.inner_text("#retention")
    assert "%" in text
    for hidden in await page.locator("#retention td.hidden").all_inner_texts():
        assert hidden == "·"
    assert violations == []
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-analysis.png"), full_page=True)
