"""No cell under k ever leaves the API: hypothesis over workloads, definitions and k, through the
real API (real PostgreSQL, the API's own store), for ad hoc funnels, retention and saved
funnels. The checks (tests/support/analysis/safety.py) are the engine tests', applied to the
JSON the API sent. The cohort overview's: tests/aggregator/api/test_cohort.py.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.analysis.definitions import FunnelDefinition, RetentionDefinition
from studyin_analytics.aggregator.analysis.loader import AnalysisStore
from studyin_analytics.aggregator.analysis.reports import FunnelResult, RetentionResult
from studyin_analytics.aggregator.analysis.suppression import small
from studyin_analytics.aggregator.api.analysis import FUNNEL_PATH, RETENTION_PATH
from studyin_analytics.aggregator.api.saved_funnels import SAVED_PATH
from studyin_analytics.aggregator.cli.settings import Settings
from tests.aggregator.analysis.test_engine import funnels, retentions
from tests.support.analysis.loading import opened_api, store_events
from tests.support.analysis.reference import learner_paths
from tests.support.analysis.safety import columns_are_safe, row_is_safe
from tests.support.api import STAFF

EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_funnel(body: object, definition: FunnelDefinition, k: int) -> None:
    result = FunnelResult.model_validate(body)
    required = [not s.optional for s in definition.steps]
    for group in result.groups:
        row_is_safe(group, required, k)
    columns_are_safe(result, k)


def _check_retention(body: object, k: int) -> None:
    for cohort in RetentionResult.model_validate(body).cohorts:
        if cohort.size is None:
            assert cohort.suppressed and all(c.learners is None and c.rate is None for c in cohort.cells)
            continue
        assert not small(cohort.size, k)
        for cell in cohort.cells:
            if cell.learners is None:  # hidden, or a period not begun yet (nothing counted, nothing to hide)
                assert cell.suppressed or not cell.complete
                assert cell.rate is None and cell.metric_per_learner is None
            else:
                assert not small(cell.learners, k) and not small(cohort.size - cell.learners, k)


async def _ask(
    settings_: Settings, seed: int, learners: int, k: int, f: FunnelDefinition, r: RetentionDefinition
) -> None:
    await store_events(settings_, learner_paths(seed, learners=learners), replace=True)
    async with opened_api(settings_.with_overrides(min_cohort_size=k, analysis_refresh_s=0)) as api:
        api.app.state.analysis = AnalysisStore(max_staleness_s=0)  # this example's events only
        staff = api.auth(STAFF, roles=["staff"])
        response = await api.client.post(FUNNEL_PATH, json=f.model_dump(mode="json"), headers=staff)
        assert response.status_code == 200, response.text
        _check_funnel(response.json(), f, k)
        response = await api.client.post(RETENTION_PATH, json=r.model_dump(mode="json"), headers=staff)
        assert response.status_code == 200, response.text
        _check_retention(response.json(), k)
        name = f"p{seed}"
        response = await api.client.post(
            f"{SAVED_PATH}/{name}/versions", json=f.model_dump(mode="json"), headers=staff
        )
        assert response.status_code == 201, response.text
        response = await api.client.get(f"{SAVED_PATH}/{name}", headers=staff)
        assert response.status_code == 200, response.text
        _check_funnel(response.json()["result"], f, k)


def test_no_cell_under_k_leaves_the_funnel_retention_and_saved_routes(migrated: Settings) -> None:
    @EXAMPLES
    @given(
        seed=st.integers(0, 10_000),
        learners=st.integers(3, 40),
        k=st.integers(2, 8),
        f=funnels(),
        r=retentions(),
    )
    def check(seed: int, learners: int, k: int, f: FunnelDefinition, r: RetentionDefinition) -> None:
        asyncio.run(_ask(migrated, seed, learners, k, f, r))

    check()
