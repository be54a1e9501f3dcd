"""No cell under k leaves: property tests over random workloads, definitions and k (server-free)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.analysis.definitions import FunnelDefinition, RetentionDefinition
from studyin_analytics.aggregator.analysis.reports import funnel_report, retention_report
from studyin_analytics.aggregator.analysis.suppression import small
from tests.support.analysis.reference import learner_paths
from tests.support.analysis.safety import columns_are_safe, row_is_safe

from .test_engine import build_store, funnels, retentions


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), definition=funnels(), k=st.integers(2, 8))
def test_no_funnel_cell_under_k_leaves(seed: int, definition: FunnelDefinition, k: int) -> None:
    store = build_store(learner_paths(seed, learners=30), seed)
    result = funnel_report(store, definition, k, breakdown_limit=3)
    required = [not s.optional for s in definition.steps]
    for group in result.groups:
        row_is_safe(group, required, k)
    columns_are_safe(result, k)
    assert len(result.groups) <= 1 + 4  # the limit plus "(other)"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), definition=retentions(), k=st.integers(2, 8))
def test_no_retention_cell_under_k_leaves(seed: int, definition: RetentionDefinition, k: int) -> None:
    store = build_store(learner_paths(seed, learners=30), seed)
    for cohort in retention_report(store, definition, k).cohorts:
        if cohort.size is None:
            assert all(c.learners is None and c.rate is None for c in cohort.cells)
            continue
        assert not small(cohort.size, k)
        for cell in cohort.cells:
            if cell.suppressed:
                assert cell.learners is None and cell.rate is None and cell.metric_per_learner is None
                continue
            if cell.learners is None:  # a period not begun yet: nothing to hide, nothing counted
                assert not cell.complete and cell.rate is None and cell.metric_per_learner is None
                continue
            assert not small(cell.learners, k) and not small(cohort.size - cell.learners, k)
