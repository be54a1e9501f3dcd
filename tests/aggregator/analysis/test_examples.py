"""The worked examples of docs/analytics.md, as tests (server-free)."""

from __future__ import annotations

from datetime import timedelta

from studyin_analytics.aggregator.analysis.definitions import Exclusion, FunnelDefinition, FunnelStep
from studyin_analytics.aggregator.analysis.funnels import learner_funnel
from studyin_analytics.aggregator.analysis.store import EventBatch, EventStore
from tests.support.analysis.reference import EPOCH, US

T0 = int(EPOCH.timestamp())


def store_of(*events: tuple[str, int, str] | tuple[str, int, str, int]) -> EventStore:
    """(learner, second, type[, tie]) rows."""
    rows = []
    for i, e in enumerate(events):
        tie = e[3] if len(e) > 3 else i  # type: ignore[misc]
        rows.append({"user_hash": e[0], "time_us": (T0 + e[1]) * US, "event_type": e[2], "tie": tie})
    store = EventStore()
    store.merge(EventBatch.of_rows(rows))
    return store


def reached(store: EventStore, *steps: FunnelStep, **kw: object) -> list[int]:
    d = FunnelDefinition(steps=steps, start=EPOCH, end=EPOCH + timedelta(days=1), **kw)  # type: ignore[arg-type]
    return [int(x) for x in learner_funnel(store, d).reached.sum(axis=1)]


V, P, C = (
    FunnelStep(event="material_view"),
    FunnelStep(event="material_progress"),
    FunnelStep(event="material_complete"),
)


def test_window_is_inclusive_and_the_latest_start_counts() -> None:
    # a: view at 0 and 50, complete at 110: from the view at 50 it is 60 s, inside a 60 s window.
    store = store_of(("a", 0, "material_view"), ("a", 50, "material_view"), ("a", 110, "material_complete"))
    assert reached(store, V, C, window_s=60) == [1, 1]
    assert reached(store, V, C, window_s=59) == [1, 0]


def test_ties_are_ordered_by_event_id() -> None:
    # Same second: the view (tie 1) comes before the complete (tie 2) in ordered mode; not the other way.
    store = store_of(("a", 5, "material_complete", 2), ("a", 5, "material_view", 1))
    assert reached(store, V, C) == [1, 1]
    store = store_of(("a", 5, "material_complete", 1), ("a", 5, "material_view", 2))
    assert reached(store, V, C) == [1, 0]


def test_strict_order_allows_nothing_between() -> None:
    store = store_of(
        ("a", 0, "material_view"),
        ("a", 1, "xp_awarded"),
        ("a", 2, "material_complete"),
        ("b", 0, "material_view"),
        ("b", 2, "material_complete"),
    )
    assert reached(store, V, C, order="strict") == [2, 1]
    assert reached(store, V, C, order="ordered") == [2, 2]


def test_per_step_window_may_need_a_later_step_event() -> None:
    # The first progress is 100 s before the complete, the second 10 s: a 30 s step window is met.
    store = store_of(
        ("a", 0, "material_view"),
        ("a", 1, "material_progress"),
        ("a", 91, "material_progress"),
        ("a", 101, "material_complete"),
    )
    within = FunnelStep(event="material_complete", within_s=30)
    assert reached(store, V, P, within) == [1, 1, 1]


def test_optional_step_may_be_skipped() -> None:
    store = store_of(
        ("a", 0, "material_view"),
        ("a", 5, "material_complete"),
        ("b", 0, "material_view"),
        ("b", 2, "material_progress"),
        ("b", 5, "material_complete"),
    )
    assert reached(store, V, P.model_copy(update={"optional": True}), C) == [2, 1, 2]


def test_an_exclusion_between_steps_breaks_that_chain_only() -> None:
    store = store_of(
        ("a", 0, "material_view"),
        ("a", 1, "ai_coach_interaction"),
        ("a", 2, "material_complete"),
        ("b", 0, "material_view"),
        ("b", 1, "ai_coach_interaction"),
        ("b", 2, "material_view"),
        ("b", 3, "material_complete"),
    )
    ex = Exclusion(event="ai_coach_interaction", from_step=1, to_step=2)
    assert reached(store, V, C, exclusions=(ex,)) == [2, 1]


def test_any_order_counts_distinct_steps_in_one_window() -> None:
    store = store_of(
        ("a", 0, "material_complete"),
        ("a", 10, "material_view"),
        ("b", 0, "material_view"),
        ("b", 500, "material_complete"),
    )
    assert reached(store, V, C, order="any", window_s=60) == [2, 1]


def test_api_requests_never_enter_the_store() -> None:
    rows = [
        {"user_hash": "a", "time_us": T0 * US, "event_type": "material_view", "tie": 1},
        {"user_hash": "a", "time_us": (T0 + 1) * US, "event_type": "api_request", "tie": 2},
        {"user_hash": "a", "time_us": (T0 + 2) * US, "event_type": "material_complete", "tie": 3},
    ]
    store = EventStore()
    store.merge(EventBatch.of_rows(rows))
    assert len(store) == 2
    assert reached(store, V, C, order="strict") == [1, 1]


def test_an_exclusion_must_lie_strictly_between() -> None:
    # Excluding views between view and complete: the second view starts a clean chain.
    store = store_of(("a", 0, "material_view"), ("a", 1, "material_view"), ("a", 2, "material_complete"))
    ex = Exclusion(event="material_view", from_step=1, to_step=2)
    assert reached(store, V, C, exclusions=(ex,)) == [1, 1]


def test_rows_past_retention_are_forgotten_and_the_rest_still_answers() -> None:
    store = store_of(
        ("a", 0, "material_view"),
        ("a", 5, "material_complete"),
        ("b", 10, "material_view"),
        ("b", 20, "material_complete"),
    )
    assert store.drop_before((T0 + 8) * US) == 2
    assert len(store) == 2 and store.offsets.tolist() == [0, 0, 2]
    assert reached(store, V, C) == [1, 1]
