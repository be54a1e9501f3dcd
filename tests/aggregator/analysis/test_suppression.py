"""No cell under k leaves: property tests over random workloads, definitions and k (server-free)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.analysis.definitions import FunnelDefinition, RetentionDefinition
from studyin_analytics.aggregator.analysis.reports import (
    FunnelGroup,
    FunnelResult,
    funnel_report,
    retention_report,
)
from studyin_analytics.aggregator.analysis.suppression import small
from tests.support.analysis.reference import learner_paths

from .test_engine import build_store, funnels, retentions


def _row_is_safe(group: FunnelGroup, required: list[bool], k: int) -> None:
    shown_required = []
    for step, req in zip(group.steps, required, strict=True):
        if step.suppressed:
            assert step.learners is None and step.drop_off is None and step.median_s is None
            assert step.p90_s is None and step.conversion_from_start is None
            assert step.conversion_from_previous is None
            continue
        assert step.learners is not None and not small(step.learners, k)
        assert step.drop_off is None or not small(step.drop_off, k)
        if req:
            shown_required.append(step.learners)
    # Nested counts: no difference of two shown required counts is small.
    for i, a in enumerate(shown_required):
        for b in shown_required[i + 1 :]:
            assert not small(a - b, k)


def _columns_are_safe(result: FunnelResult, k: int) -> None:
    overall, groups = result.groups[0], result.groups[1:]
    if not groups:
        return
    for s, step in enumerate(overall.steps):
        if step.learners is None:
            continue
        shown = sum(g.steps[s].learners or 0 for g in groups)
        assert not small(step.learners - shown, k), (s, step.learners, shown)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), definition=funnels(), k=st.integers(2, 8))
def test_no_funnel_cell_under_k_leaves(seed: int, definition: FunnelDefinition, k: int) -> None:
    store = build_store(learner_paths(seed, learners=30), seed)
    result = funnel_report(store, definition, k, breakdown_limit=3)
    required = [not s.optional for s in definition.steps]
    for group in result.groups:
        _row_is_safe(group, required, k)
    _columns_are_safe(result, k)
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
            assert cell.learners is not None
            assert not small(cell.learners, k) and not small(cohort.size - cell.learners, k)
