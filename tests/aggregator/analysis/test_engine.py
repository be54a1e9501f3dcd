"""The funnel and retention engines against the brute-force reference (server-free).

Many random learner-path workloads (hypothesis seeds) and many random definitions: every
order mode, overall and per-step windows, optional steps, exclusions, filters, breakdowns;
retention in every mode, period, return event and metric, in several time zones. The store is
built from shuffled batches (arrival order must not matter).
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from types import ModuleType

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.analysis.definitions import (
    EventMatcher,
    Exclusion,
    FunnelDefinition,
    FunnelStep,
    PropertyFilter,
    RetentionDefinition,
    ReturnEvent,
)
from studyin_analytics.aggregator.analysis.funnels import KERNEL, learner_funnel
from studyin_analytics.aggregator.analysis.kernels import RETENTION as RETENTION_KERNEL
from studyin_analytics.aggregator.analysis.reports import funnel_report, retention_report
from studyin_analytics.aggregator.analysis.retention import retention_counts
from studyin_analytics.aggregator.analysis.store import EventBatch, EventStore
from tests.support.analysis.reference import (
    EPOCH,
    MATERIALS,
    Event,
    LearnerTruth,
    funnel_truth,
    learner_paths,
    nearest_rank,
    retention_truth,
)

TYPES = (
    "session_start",
    "material_view",
    "material_progress",
    "material_complete",
    "xp_awarded",
    "ai_coach_interaction",
    "session_end",
    "achievement_unlocked",
)
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build_store(events: list[Event], seed: int = 0, batches: int = 3) -> EventStore:
    """The store fed in ``batches`` shuffled batches (out of order across and within)."""
    rows = [e.row() for e in events]
    random.Random(seed).shuffle(rows)
    store = EventStore()
    size = max(1, len(rows) // batches + 1)
    for i in range(0, len(rows), size):
        store.merge(EventBatch.of_rows(rows[i : i + size]))
    return store


@st.composite
def matchers(draw: st.DrawFn, cls: type = FunnelStep, types: tuple[str, ...] = TYPES) -> EventMatcher:
    event = draw(st.sampled_from(types))
    filters: tuple[PropertyFilter, ...] = ()
    if event.startswith("material") and draw(st.booleans()):
        if draw(st.booleans()):
            filters = (
                PropertyFilter(
                    property="material_type",
                    values=tuple(
                        draw(
                            st.lists(
                                st.sampled_from(sorted(set(MATERIALS.values()))),
                                min_size=1,
                                max_size=2,
                                unique=True,
                            )
                        )
                    ),
                ),
            )
        else:
            filters = (
                PropertyFilter(property="material_id", values=(draw(st.sampled_from(sorted(MATERIALS))),)),
            )
    return cls(event=event, filters=filters)


@st.composite
def funnels(draw: st.DrawFn) -> FunnelDefinition:
    order = draw(st.sampled_from(("strict", "ordered", "any")))
    n = draw(st.integers(2, 4))
    steps = []
    for k in range(n):
        base = draw(matchers())
        optional = order != "any" and 0 < k < n - 1 and draw(st.booleans())
        within = None
        if order != "any" and k > 0 and draw(st.booleans()):
            within = draw(st.sampled_from((1, 30, 600, 86_400)))
        steps.append(FunnelStep(event=base.event, filters=base.filters, optional=optional, within_s=within))
    if order == "any":
        events = draw(st.lists(st.sampled_from(TYPES), min_size=n, max_size=n, unique=True))
        steps = [FunnelStep(event=e) for e in events]
    exclusions = []
    if order == "ordered" and draw(st.booleans()):
        ex = draw(matchers(Exclusion))
        lo = draw(st.integers(1, n - 1))
        exclusions.append(
            Exclusion(event=ex.event, filters=ex.filters, from_step=lo, to_step=draw(st.integers(lo + 1, n)))
        )
    start = EPOCH + timedelta(days=draw(st.integers(0, 20)))
    return FunnelDefinition(
        steps=tuple(steps),
        order=order,
        exclusions=tuple(exclusions),
        window_s=draw(st.sampled_from((60, 3600, 86_400, 14 * 86_400))),
        start=start,
        end=start + timedelta(days=draw(st.integers(1, 40))),
        breakdown=draw(st.sampled_from((None, "material_type", "cohort_week"))),
        timezone=draw(st.sampled_from(("UTC", "Europe/Berlin", "Asia/Kathmandu"))),
    )


ENGINES = (("compiled", KERNEL), ("numpy", None))
"""Both funnel engines: the compiled single pass and the numpy fallback (funnels.py)."""


def _check_funnel(d: FunnelDefinition, events: list[Event], store: EventStore) -> None:
    truth = funnel_truth(d, events)
    assert KERNEL is not None, "the compiled funnel kernel is not built (see test_kernel.py)"
    for _, kernel in ENGINES:
        _check_learners(d, truth, store, kernel)
    _check_report(d, truth, store)


def _check_learners(
    d: FunnelDefinition, truth: dict[str, LearnerTruth], store: EventStore, kernel: ModuleType | None
) -> None:
    lf = learner_funnel(store, d, kernel)
    names = [store.learners.values[c] for c in lf.learners]
    assert sorted(names) == sorted(truth), "entering learners"
    for j, name in enumerate(names):
        t = truth[name]
        assert list(lf.reached[:, j]) == t.reached, (name, d)
        if d.order != "any":
            got = [int(x) if x >= 0 else None for x in lf.first_us[:, j]]
            assert got == t.first_us, (name, d)


def _check_report(d: FunnelDefinition, truth: dict[str, LearnerTruth], store: EventStore) -> None:
    # The report with k = 1 hides nothing: counts and nearest-rank times equal the truth.
    report = funnel_report(store, d, k=1, breakdown_limit=50)
    overall = report.groups[0]
    prev = 0
    for s, step in enumerate(overall.steps):
        expected = sum(t.reached[s] for t in truth.values())
        assert step.learners == expected
        if s > 0 and d.order != "any":
            diffs = [
                t.first_us[s] - t.first_us[prev]
                for t in truth.values()  # type: ignore[operator]
                if t.reached[s]
            ]
            assert step.median_s == (nearest_rank(diffs, 0.5) / 1e6 if diffs else None)
            assert step.p90_s == (nearest_rank(diffs, 0.9) / 1e6 if diffs else None)
        if not d.steps[s].optional:
            prev = s
    if d.breakdown is not None:
        assert sum(g.steps[0].learners or 0 for g in report.groups[1:]) == overall.steps[0].learners


@SLOW
@given(seed=st.integers(0, 10_000), definition=funnels())
def test_funnels_equal_the_brute_force(seed: int, definition: FunnelDefinition) -> None:
    events = learner_paths(seed, learners=25)
    _check_funnel(definition, events, build_store(events, seed))


def test_funnels_on_many_seeds_with_a_fixed_pathway() -> None:
    """The pathway the product team asks about, over 30 workloads."""
    for seed in range(30):
        events = learner_paths(seed, learners=40)
        store = build_store(events, seed)
        for order in ("strict", "ordered"):
            d = FunnelDefinition(
                steps=(
                    FunnelStep(event="session_start"),
                    FunnelStep(event="material_view"),
                    FunnelStep(event="material_progress", optional=True),
                    FunnelStep(event="material_complete", within_s=3600),
                    FunnelStep(event="xp_awarded"),
                ),
                order=order,
                start=EPOCH,
                end=EPOCH + timedelta(days=60),
            )
            _check_funnel(d, events, store)


def test_most_learners_do_not_convert() -> None:
    """The workloads are paths, not noise: drop-off at every step, few reach the end."""
    events = learner_paths(7, learners=400)
    store = build_store(events)
    d = FunnelDefinition(
        steps=(
            FunnelStep(event="material_view"),
            FunnelStep(event="material_progress", within_s=60),
            FunnelStep(event="material_complete", within_s=600),
            FunnelStep(event="xp_awarded", within_s=1),
        ),
        start=EPOCH,
        end=EPOCH + timedelta(days=60),
        window_s=3600,
    )
    counts = [s.learners or 0 for s in funnel_report(store, d, 5, 10).groups[0].steps]
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0
    assert counts[3] < counts[0] / 2


@st.composite
def retentions(draw: st.DrawFn) -> RetentionDefinition:
    kind = draw(st.sampled_from(("any_activity", "material_complete", "session", "event")))
    ret = ReturnEvent(
        kind=kind,
        min_session_minutes=draw(st.sampled_from((1.0, 15.0))),
        matcher=draw(matchers(EventMatcher)) if kind == "event" else None,
    )
    return RetentionDefinition(
        start=(EPOCH + timedelta(days=draw(st.integers(-3, 10)))).date(),
        cohorts=draw(st.integers(1, 6)),
        periods=draw(st.integers(1, 8)),
        period=draw(st.sampled_from(("day", "week", "month"))),
        mode=draw(st.sampled_from(("first_time", "recurring"))),
        start_event=draw(st.none() | matchers(EventMatcher)),
        return_event=ret,
        metric=draw(st.sampled_from((None, "xp", "study_minutes"))),
        timezone=draw(st.sampled_from(("UTC", "Europe/Berlin", "America/St_Johns", "Pacific/Chatham"))),
    )


@SLOW
@given(seed=st.integers(0, 10_000), definition=retentions())
def test_retention_equals_the_brute_force(seed: int, definition: RetentionDefinition) -> None:
    events = learner_paths(seed, learners=30)
    store = build_store(events, seed)
    sizes, retained, metric = retention_truth(definition, events)
    assert RETENTION_KERNEL is not None, "the compiled retention kernel is not built (see test_kernel.py)"
    for kernel in (RETENTION_KERNEL, None):  # the compiled pass and the numpy fallback
        counts = retention_counts(store, definition, kernel)
        assert list(counts.sizes) == sizes
        assert counts.retained.tolist() == retained
        assert np.allclose(counts.metric_sum, np.array(metric), rtol=1e-9, atol=1e-6)
    report = retention_report(store, definition, k=1, today=date(2200, 1, 1))  # every period begun
    for c, cohort in enumerate(report.cohorts):
        for n, cell in enumerate(cohort.cells):
            assert cell.learners == retained[c][n]
            if n > 0 and definition.metric and retained[c][n]:
                assert cell.metric_per_learner is not None
                assert abs(cell.metric_per_learner - metric[c][n] / retained[c][n]) < 1e-6


def test_periods_not_begun_are_null_not_zero() -> None:
    """A period still to come is no one's return yet: null and not complete, never 0 % (nor suppressed)."""
    events = learner_paths(3, learners=30)
    store = build_store(events)
    first = min(e.time_us for e in events)
    start = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=first)).date()
    definition = RetentionDefinition(start=start, cohorts=1, period="day", periods=5)
    report = retention_report(store, definition, k=1, today=start + timedelta(days=1))
    cells = report.cohorts[0].cells
    assert [c.complete for c in cells] == [True] + [False] * 5  # periods 0..5
    assert cells[1].learners is not None  # the current period: counted so far
    assert all(c.learners is None and c.rate is None and not c.suppressed for c in cells[2:])


def test_arrival_order_and_batching_do_not_matter() -> None:
    events = learner_paths(11, learners=60)
    one = build_store(events, batches=1)
    for seed in range(5):
        other = build_store(events, seed=seed, batches=7)
        names = [other.learners.values[c] for c in other.learner]
        assert names == [one.learners.values[c] for c in one.learner] or sorted(set(names)) == sorted(
            set(one.learners.values)
        )
        for code, name in enumerate(one.learners.values):
            a = one.time[one.offsets[code] : one.offsets[code + 1]]
            c2 = other.learners.codes[name]
            b = other.time[other.offsets[c2] : other.offsets[c2 + 1]]
            assert a.tolist() == b.tolist()
            ta = one.columns["tie"][one.offsets[code] : one.offsets[code + 1]]
            tb = other.columns["tie"][other.offsets[c2] : other.offsets[c2 + 1]]
            assert ta.tolist() == tb.tolist()


@st.composite
def bounded_funnels(draw: st.DrawFn) -> FunnelDefinition:
    """Ordered funnels along the pathway where exclusions and tight windows decide."""
    pathway = ("session_start", "material_view", "material_progress", "material_complete", "xp_awarded")
    n = draw(st.integers(2, 5))
    events = sorted(draw(st.lists(st.sampled_from(range(5)), min_size=n, max_size=n)))
    steps = [
        FunnelStep(
            event=pathway[e],
            optional=0 < k < n - 1 and draw(st.booleans()),
            within_s=draw(st.sampled_from((None, 1, 5, 20, 30, 300))) if k else None,
        )
        for k, e in enumerate(events)
    ]
    lo = draw(st.integers(1, n - 1))
    exclusion = Exclusion(
        event=draw(
            st.sampled_from(("ai_coach_interaction", "material_progress", "xp_awarded", "session_end"))
        ),
        from_step=lo,
        to_step=draw(st.integers(lo + 1, n)),
    )
    return FunnelDefinition(
        steps=tuple(steps),
        order="ordered",
        exclusions=(exclusion,) if draw(st.booleans()) else (),
        window_s=draw(st.sampled_from((5, 30, 301, 3600, 86_400 * 3))),
        start=EPOCH,
        end=EPOCH + timedelta(days=draw(st.integers(1, 40))),
    )


@SLOW
@given(seed=st.integers(0, 10_000), definition=bounded_funnels())
def test_exclusions_and_tight_windows_equal_the_brute_force(seed: int, definition: FunnelDefinition) -> None:
    events = learner_paths(seed, learners=25)
    _check_funnel(definition, events, build_store(events, seed))


@st.composite
def long_funnels(draw: st.DrawFn) -> FunnelDefinition:
    """Up to 20 steps over the session's pathway again and again (the bench's shape: one event type
    at several steps), with some optional steps, per-step windows and exclusions."""
    pathway = ("session_start", "material_view", "material_progress", "material_complete", "session_end")
    n = draw(st.integers(6, 20))
    offset = draw(st.integers(0, 4))
    optional_at = set(draw(st.lists(st.integers(1, n - 2), max_size=2)))
    steps = [
        FunnelStep(
            event=pathway[(k + offset) % len(pathway)],
            optional=k in optional_at,
            within_s=draw(st.sampled_from((None, None, 60, 3 * 86_400))) if k else None,
        )
        for k in range(n)
    ]
    order = draw(st.sampled_from(("strict", "ordered")))
    exclusions: tuple[Exclusion, ...] = ()
    if order == "ordered" and draw(st.booleans()):
        lo = draw(st.integers(1, n - 1))
        exclusions = (
            Exclusion(
                event=draw(st.sampled_from(("ai_coach_interaction", "xp_awarded", "achievement_unlocked"))),
                from_step=lo,
                to_step=draw(st.integers(lo + 1, n)),
            ),
        )
    start = EPOCH + timedelta(days=draw(st.integers(0, 10)))
    return FunnelDefinition(
        steps=tuple(steps),
        order=order,
        exclusions=exclusions,
        window_s=draw(st.sampled_from((3600, 86_400, 14 * 86_400, 60 * 86_400))),
        start=start,
        end=start + timedelta(days=draw(st.integers(1, 40))),
    )


@SLOW
@given(seed=st.integers(0, 10_000), definition=long_funnels())
def test_long_funnels_equal_the_brute_force(seed: int, definition: FunnelDefinition) -> None:
    """Where the single pass differs most from the step-by-step engine: many steps, chains that go on."""
    events = learner_paths(seed, learners=25)
    _check_funnel(definition, events, build_store(events, seed))
