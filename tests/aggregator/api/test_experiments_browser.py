"""The dashboard's experiments view in a real headless Chromium: per-variant table, lift chart, sample size,
and the sample-ratio warning shown prominently.

The per-variant sums are written straight into ``experiment_variant_sums`` (a biased split: 400 against 520
learners under 1:1 weights): what the page shows is under test here; that the pipeline produces exact sums
is tests/aggregator/consumer/test_experiments.py's and test_experiments.py's.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from playwright.async_api import Browser

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.instrumentation import StudyInTracker
from tests.support.api import token
from tests.support.browser import ARTIFACTS, csp_violations, sign_in

STAFF = "exp-staff-0001"


async def test_staff_sees_the_experiment_and_the_sample_ratio_warning(
    experiments_pipeline: tuple[Settings, StudyInTracker, TracerProvider],
    experiments_server: str,
    browser: Browser,
) -> None:
    settings = experiments_pipeline[0]
    page = await browser.new_page(viewport={"width": 1280, "height": 1600})
    violations = csp_violations(page)
    await sign_in(page, experiments_server, token(settings, STAFF, roles=["staff"]))
    await page.wait_for_selector("#experiments[data-ready='coach-prompt']", timeout=15_000)
    warning = page.locator("#srm-warning")
    assert await warning.is_visible()
    assert "untrustworthy" in await warning.inner_text()
    assert await page.locator("#exp-variants tbody tr").count() == 2
    treatment = await page.inner_text("#exp-variants tbody tr[data-variant='treatment']")
    assert "520" in treatment and "11.00" in treatment and "55.0 %" in treatment
    assert int(await page.get_attribute("#chart-lift", "data-points") or 0) == 3  # xp, completion, sessions
    assert await page.locator("#chart-lift canvas").count() >= 1
    assert "of the planned size" in await page.inner_text("#exp-sample")
    assert not await page.is_visible("#exp-suppressed")
    assert violations == []
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-experiments.png"), full_page=True)
    await page.close()
