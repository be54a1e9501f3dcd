"""The dashboard in a real headless Chromium, on data from the real pipeline.

Learner: charts and calendar render, a new event appears live, the staff view is denied.
Staff: per-route latency and the live events-per-second figure. Screenshots go to
``test-artifacts/`` (CI keeps them).
"""

from __future__ import annotations

import contextlib

from opentelemetry.sdk.trace import TracerProvider
from playwright.async_api import Browser

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.instrumentation import StudyInTracker
from tests.support.api import token
from tests.support.browser import ARTIFACTS, DASHBOARD_OTHER, csp_violations, sign_in
from tests.support.browser import DASHBOARD_LEARNER as LEARNER
from tests.support.browser import DASHBOARD_STAFF as STAFF


async def test_learner_sees_charts_live_events_and_no_staff_view(
    dashboard_pipeline: tuple[Settings, StudyInTracker, TracerProvider],
    dashboard_server: str,
    browser: Browser,
) -> None:
    settings, tracker, _ = dashboard_pipeline
    page = await browser.new_page(viewport={"width": 1280, "height": 1100})
    violations = csp_violations(page)
    await sign_in(page, dashboard_server, token(settings, LEARNER))

    # Charts rendered from the rollups (uPlot draws on canvas).
    assert int(await page.get_attribute("#chart-minutes", "data-points") or 0) >= 1
    assert int(await page.get_attribute("#chart-xp", "data-points") or 0) >= 1
    assert await page.locator("#chart-minutes canvas").count() >= 1
    assert int(await page.get_attribute("#heatmap", "data-active-days") or 0) >= 1
    assert await page.locator("#heatmap div[data-level]").count() >= 365
    assert "first-steps" in await page.inner_text("#achievements")
    assert int(await page.inner_text("#fig-xp")) > 0
    assert await page.is_visible("#staff-denied")
    assert not await page.is_visible("#staff-content")

    # A new event reaches the page without a reload.
    await page.wait_for_selector("body[data-live='learner']", timeout=10_000)
    tracker.xp_awarded(LEARNER, 42, "live_test")
    tracker.xp_awarded(DASHBOARD_OTHER, 7, "not_for_this_learner")
    item = page.locator("#live-activity li[data-type='xp_awarded']")
    await item.first.wait_for(timeout=10_000)
    text = await page.inner_text("#live-activity")
    assert "xp_amount=42" in text
    assert "not_for_this_learner" not in text  # another learner's event is not in this feed

    # Everything above ran under the page's Content-Security-Policy, which the browser enforces:
    # an injected inline script does not run.
    assert violations == []
    with contextlib.suppress(Exception):  # Playwright reports the refusal as an error, or not
        await page.add_script_tag(content="document.body.dataset.injected = '1'")
    assert await page.get_attribute("body", "data-injected") is None
    assert any("script-src" in v for v in violations), violations

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-learner.png"), full_page=True)
    await page.close()


async def test_staff_sees_routes_and_live_rate(
    dashboard_pipeline: tuple[Settings, StudyInTracker, TracerProvider],
    dashboard_server: str,
    browser: Browser,
) -> None:
    settings, tracker, _ = dashboard_pipeline
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    violations = csp_violations(page)
    await sign_in(page, dashboard_server, token(settings, STAFF, roles=["staff"]))
    assert await page.is_visible("#staff-content")
    assert not await page.is_visible("#staff-denied")
    assert await page.locator("#routes tbody tr").count() >= 3
    assert int(await page.get_attribute("#chart-latency", "data-points") or 0) >= 3
    assert int(await page.inner_text("#fig-requests")) > 0

    await page.wait_for_selector("body[data-live='staff']", timeout=10_000)
    for _ in range(20):
        tracker.xp_awarded(LEARNER, 1, "rate_test")
    # A function, not an expression: the page's CSP refuses the eval an expression needs.
    await page.wait_for_function(
        "() => Number(document.getElementById('fig-eps').textContent) > 0", timeout=10_000
    )
    # The staff feed is aggregated: no individual items.
    assert await page.locator("#live-activity li").count() == 0
    assert violations == []  # the charts and the feed work under the page's policy

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-staff.png"), full_page=True)
    await page.close()
