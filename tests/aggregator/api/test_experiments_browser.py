"""The dashboard's experiments view in a real headless Chromium: per-variant table, lift chart, sample size,
and the sample-ratio warning shown prominently.

The per-variant sums are written straight into ``experiment_variant_sums`` (a biased split: 400 against 520
learners under 1:1 weights): what the page shows is under test here; that the pipeline produces exact sums
is tests/aggregator/consumer/test_experiments.py's and test_experiments.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from playwright.async_api import Browser

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.experiments import store
from studyin_analytics.aggregator.experiments.definitions import ExperimentDefinition
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.instrumentation import StudyInTracker
from tests.aggregator.api.test_dashboard_browser import ARTIFACTS, browser, csp_violations, sign_in
from tests.support.api import token
from tests.support.experiments import definition

__all__ = ["browser"]  # the Chromium fixture, shared with the dashboard's own browser tests

STAFF = "exp-staff-0001"
ROWS = [
    # variant, metric, n, successes, sum, sum of squares
    ("control", "xp", 400, 0, 4000, 400 * (100 + 25)),
    ("treatment", "xp", 520, 0, 5720, 520 * (121 + 25)),
    ("control", "sessions", 400, 0, 800, 400 * 5),
    ("treatment", "sessions", 520, 0, 1040, 520 * 5),
    ("control", "completion_rate", 400, 200, 200, 200),
    ("treatment", "completion_rate", 520, 286, 286, 286),
]


@pytest.fixture
async def pipeline(migrated: Settings) -> AsyncIterator[tuple[Settings, StudyInTracker, TracerProvider]]:
    conn = await connect(migrated)
    try:
        body = definition(
            "coach-prompt", primary_metric="xp", guardrail_metrics=["completion_rate", "sessions"]
        )
        await store.create(conn, ExperimentDefinition.model_validate(body), "test")
        await conn.executemany(
            "INSERT INTO experiment_variant_sums (experiment_key, version, variant, metric, n, successes, "
            "sum, sum_squares) VALUES ('coach-prompt', 1, $1, $2, $3, $4, $5, $6)",
            ROWS,
        )
    finally:
        await conn.close()
    provider = TracerProvider()
    yield migrated, StudyInTracker(tracer_provider=provider), provider
    provider.shutdown()


async def test_staff_sees_the_experiment_and_the_sample_ratio_warning(
    pipeline: tuple[Settings, StudyInTracker, TracerProvider], server: str, browser: Browser
) -> None:
    settings = pipeline[0]
    page = await browser.new_page(viewport={"width": 1280, "height": 1600})
    violations = csp_violations(page)
    await sign_in(page, server, token(settings, STAFF, roles=["staff"]))
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
