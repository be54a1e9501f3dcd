"""What "no cell under k leaves" means for one funnel answer (shared by the engine's and the API's tests)."""

from __future__ import annotations

from studyin_analytics.aggregator.analysis.reports import FunnelGroup, FunnelResult
from studyin_analytics.aggregator.analysis.suppression import small


def row_is_safe(group: FunnelGroup, required: list[bool], k: int) -> None:
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


def columns_are_safe(result: FunnelResult, k: int) -> None:
    overall, groups = result.groups[0], result.groups[1:]
    if not groups:
        return
    for s, step in enumerate(overall.steps):
        if step.learners is None:
            continue
        shown = sum(g.steps[s].learners or 0 for g in groups)
        assert not small(step.learners - shown, k), (s, step.learners, shown)
