"""The xAPI mapping, row by row, and its invariants (pure: no server). Rows come through the real
tracker -> privacy guard -> wire -> aggregator mapping path (samples.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from studyin_analytics.aggregator.consumer.mapping import EventRow
from studyin_analytics.aggregator.lrs import xapi
from studyin_analytics.aggregator.lrs.xapi import (
    LRS_ACTOR_FIELD,
    Selection,
    SelectionError,
    Skipped,
    SkipReason,
    Statement,
    StatementMapper,
    XapiConfig,
)
from studyin_analytics.instrumentation import events
from tests.support.lrs.samples import (
    ANALYTICS,
    ANALYTICS_BEFORE_ROTATION,
    CONFIG,
    INTERACTION,
    LRS,
    SAMPLES,
    SESSION,
    USER,
    rows_through_pipeline,
    sample_rows,
)

pytestmark = pytest.mark.unit

MAPPER = StatementMapper(CONFIG)
BASE = CONFIG.iri_base


def statements(event_type: str) -> list[Statement]:
    out = [MAPPER.map(row) for row in sample_rows(event_type)]
    assert all(not isinstance(s, Skipped) for s in out), out
    return out  # type: ignore[return-value]


def ext(name: str) -> str:
    return f"{BASE}/extensions/{name}"


# --- one test per mapping row (docs/xapi.md) --------------------------------------------------------


def test_session_start_is_initialized_on_the_platform_with_the_cmi5_session_id() -> None:
    plain, with_material = statements("session_start")
    assert plain["verb"]["id"] == "http://adlnet.gov/expapi/verbs/initialized"
    assert plain["object"] == {
        "objectType": "Activity",
        "id": f"{BASE}/activities/studyin",
        "definition": {"type": "http://id.tincanapi.com/activitytype/lms", "name": {"en-US": "StudyIn"}},
    }
    assert plain["context"]["extensions"] == {xapi.EXT_SESSION_ID: str(SESSION)}
    assert "contextActivities" not in plain["context"] and "result" not in plain
    assert with_material["context"]["contextActivities"] == {
        "other": [{"objectType": "Activity", "id": f"{BASE}/activities/materials/cardio-101"}]
    }


def test_session_end_is_terminated_or_abandoned_with_the_iso_duration() -> None:
    completed, abandoned, timed_out = statements("session_end")
    assert completed["verb"]["id"] == "http://adlnet.gov/expapi/verbs/terminated"
    assert completed["result"] == {
        "duration": "PT1H2M3.46S",
        "extensions": {ext("end-reason"): "completed", ext("xp-earned"): 40},
    }
    # materials touched: related activities, each once, in order
    assert [a["id"] for a in completed["context"]["contextActivities"]["other"]] == [
        f"{BASE}/activities/materials/cardio-101",
        f"{BASE}/activities/materials/ecg-basics",
    ]
    assert abandoned["verb"]["id"] == "http://adlnet.gov/expapi/verbs/terminated"
    assert abandoned["result"]["duration"] == "PT0S"
    assert abandoned["result"]["extensions"][ext("end-reason")] == "abandoned"
    assert "contextActivities" not in abandoned["context"]
    # an idle timeout is cmi5's "abandoned": the session ended abnormally
    assert timed_out["verb"]["id"] == "https://w3id.org/xapi/adl/verbs/abandoned"
    assert timed_out["result"]["duration"] == "PT168H"
    assert all(
        s["context"]["extensions"][xapi.EXT_SESSION_ID] == str(SESSION) for s in statements("session_end")
    )


def test_material_view_is_experienced_with_the_activity_type_of_each_material_type() -> None:
    produced = statements("material_view")
    assert {s["verb"]["id"] for s in produced} == {"http://adlnet.gov/expapi/verbs/experienced"}
    types = {s["object"]["id"].rsplit("/m-", 1)[1]: s["object"]["definition"] for s in produced}
    assert types == {
        kind.value: {
            "type": xapi.MATERIAL_ACTIVITY_TYPES[kind],
            "extensions": {ext("material-type"): kind.value},
        }
        for kind in events.MaterialType
    }
    assert xapi.MATERIAL_ACTIVITY_TYPES[events.MaterialType.VIDEO] == "http://activitystrea.ms/video"
    assert produced[0]["context"]["extensions"] == {xapi.EXT_SESSION_ID: str(SESSION)}


def test_material_progress_is_progressed_with_the_cmi5_integer_percent() -> None:
    produced = statements("material_progress")
    assert {s["verb"]["id"] for s in produced} == {"http://adlnet.gov/expapi/verbs/progressed"}
    assert [s["result"] for s in produced] == [
        {"extensions": {"https://w3id.org/xapi/cmi5/result/extensions/progress": percent}}
        for percent in (0, 29, 100)
    ]


def test_material_complete_is_completed_with_duration_and_scaled_score() -> None:
    full, bare = statements("material_complete")
    assert full["verb"]["id"] == bare["verb"]["id"] == "http://adlnet.gov/expapi/verbs/completed"
    assert full["result"] == {"completion": True, "duration": "PT1M35.5S", "score": {"scaled": 0.85}}
    assert bare["result"] == {"completion": True}
    assert bare["object"]["definition"]["type"] == "http://adlnet.gov/expapi/activities/assessment"


def test_xp_awarded_is_earned_reward_with_amount_and_reason() -> None:
    (statement,) = statements("xp_awarded")
    assert statement["verb"] == {"id": "http://id.tincanapi.com/verb/earned", "display": {"en-US": "earned"}}
    assert statement["object"]["definition"]["type"] == "http://id.tincanapi.com/activitytype/reward"
    assert statement["result"] == {"extensions": {ext("xp-amount"): 25}}
    assert statement["context"]["extensions"] == {
        ext("xp-reason"): "quiz.correct",
        xapi.EXT_SESSION_ID: str(SESSION),
    }


def test_level_up_is_earned_level_with_total_xp() -> None:
    (statement,) = statements("level_up")
    assert statement["verb"]["id"] == "http://id.tincanapi.com/verb/earned"
    assert statement["object"]["id"] == f"{BASE}/activities/levels/5"
    assert statement["object"]["definition"]["type"] == f"{BASE}/activity-types/level"
    assert statement["result"] == {"extensions": {ext("total-xp"): 1200}}


def test_achievement_unlocked_is_earned_badge() -> None:
    (statement,) = statements("achievement_unlocked")
    assert statement["verb"]["id"] == "http://id.tincanapi.com/verb/earned"
    assert statement["object"] == {
        "objectType": "Activity",
        "id": f"{BASE}/activities/achievements/first-week",
        "definition": {"type": "http://activitystrea.ms/badge"},
    }
    assert "result" not in statement


def test_streaks_are_project_verbs_on_the_daily_study_streak() -> None:
    (updated,) = statements("streak_updated")
    (broken,) = statements("streak_broken")
    assert updated["verb"]["id"] == f"{BASE}/verbs/extended"
    assert broken["verb"]["id"] == f"{BASE}/verbs/broke"
    assert updated["object"] == broken["object"]
    assert updated["object"]["definition"]["type"] == f"{BASE}/activity-types/streak"
    assert updated["result"] == {"extensions": {ext("streak-days"): 7}}
    assert broken["result"] == {"extensions": {ext("previous-streak-days"): 12}}


def leaf_values(node: Any) -> set[Any]:
    """Every scalar inside a statement (keys excluded)."""
    if isinstance(node, dict):
        return set().union(*(leaf_values(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(leaf_values(item) for item in node))
    return {node}


def test_ai_coach_interaction_is_asked_with_the_topic_and_no_operations_data() -> None:
    (statement,) = statements("ai_coach_interaction")
    assert statement["verb"]["id"] == "http://adlnet.gov/expapi/verbs/asked"
    assert statement["object"]["id"] == f"{BASE}/activities/ai-coach/interactions/{INTERACTION}"
    assert statement["context"]["extensions"] == {ext("topic-category"): "cardiology"}
    # Compared leaf by leaf: a substring test of the whole statement also matched "380" inside its
    # random ids and timestamps now and then.
    values = leaf_values(statement)
    assert not values & {"gpt-4o-mini", 812.5, "812.5", 380, "380"}
    assert not any("gpt-4o-mini" in value for value in values if isinstance(value, str))


def test_ai_coach_feedback_is_rated_with_the_scaled_score() -> None:
    produced = statements("ai_coach_feedback")
    assert {s["verb"]["id"] for s in produced} == {"http://id.tincanapi.com/verb/rated"}
    assert [s["result"]["score"] for s in produced] == [
        {"scaled": scaled, "raw": raw, "min": 1, "max": 5} for raw, scaled in ((1, 0.0), (3, 0.5), (5, 1.0))
    ]
    # the rating is about the interaction the learner asked
    assert produced[0]["object"] == statements("ai_coach_interaction")[0]["object"]


@pytest.mark.parametrize("event_type", sorted(xapi.SYSTEM_EVENT_TYPES))
def test_system_events_are_never_mapped(event_type: str) -> None:
    rows = sample_rows(event_type)
    assert rows and all(MAPPER.map(row) == Skipped(SkipReason.SYSTEM_EVENT) for row in rows)
    with pytest.raises(SelectionError, match="system event"):
        Selection.of([event_type])


def test_every_event_type_is_mapped_or_a_system_event() -> None:
    """A new event type must be classified here, or this fails."""
    assert set(events.EVENT_TYPES) == xapi.MAPPED_EVENT_TYPES | xapi.SYSTEM_EVENT_TYPES
    assert not xapi.MAPPED_EVENT_TYPES & xapi.SYSTEM_EVENT_TYPES
    assert set(SAMPLES) == set(events.EVENT_TYPES)


# --- the common parts ------------------------------------------------------------------------------


def test_actor_is_an_account_named_by_the_lrs_pseudonym_and_nothing_else() -> None:
    (row,) = sample_rows("level_up")
    statement = MAPPER.map(row)
    assert not isinstance(statement, Skipped)
    assert statement["actor"] == {
        "objectType": "Agent",
        "account": {"homePage": "https://studyin.test", "name": LRS.pseudonymize(USER)},
    }
    assert row.user_hash == ANALYTICS.pseudonymize(USER)
    assert row.user_hash not in repr(statement)  # the analytics pseudonym stays in analytics


def test_the_actor_is_stable_across_the_analytics_key_rotation() -> None:
    """One learner, before and after the analytics key rotates: two analytics pseudonyms, one LRS actor."""
    emission = [(USER, events.StreakUpdated, {"streak_days": 3})]
    before = rows_through_pipeline(emission, analytics=ANALYTICS_BEFORE_ROTATION)[0]
    after = rows_through_pipeline(emission, analytics=ANALYTICS)[0]
    assert before.user_hash != after.user_hash
    actors = [MAPPER.map(row)["actor"] for row in (before, after)]  # type: ignore[index]
    assert actors[0] == actors[1]


@pytest.mark.parametrize("value", [None, "", "learner-4711", "lrs1:NOTHEX", 12345, ["lrs1:" + "0" * 32]])
def test_no_statement_without_an_lrs_pseudonym(value: Any) -> None:
    (row,) = sample_rows("level_up")
    properties = {k: v for k, v in row.properties.items() if k != LRS_ACTOR_FIELD}
    if value is not None:
        properties[LRS_ACTOR_FIELD] = value
    assert MAPPER.map(row._replace(properties=properties)) == Skipped(SkipReason.NO_LRS_ACTOR)
    # the app does not carry it yet: no fallback to the analytics pseudonym
    (bare,) = rows_through_pipeline([(USER, events.LevelUp, {"level": 2, "total_xp": 10})], lrs=None)
    assert MAPPER.map(bare) == Skipped(SkipReason.NO_LRS_ACTOR)


def test_statement_id_is_uuid5_of_the_event_id_whatever_the_configuration() -> None:
    rows = sample_rows("material_view")
    other = StatementMapper(
        XapiConfig(iri_base="https://elsewhere.test/x/", home_page="https://elsewhere.test")
    )
    for row in rows:
        statement, again, elsewhere = MAPPER.map(row), MAPPER.map(row), other.map(row)
        expected = uuid.uuid5(uuid.UUID("62819aed-f4dd-47ae-8402-f69619b5b6a6"), str(row.event_id))
        assert statement["id"] == again["id"] == elsewhere["id"] == str(expected)  # type: ignore[index]
        assert statement == again
    assert len({MAPPER.map(row)["id"] for row in rows}) == len(rows)  # type: ignore[index]


def test_timestamp_is_the_event_time_in_utc_with_microseconds() -> None:
    (row,) = sample_rows("level_up")
    statement = MAPPER.map(row)
    assert statement["timestamp"] == row.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[index]
    whole = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert xapi.timestamp(whole) == "2026-03-01T12:00:00.000000Z"
    assert xapi.timestamp(whole.astimezone(timezone(timedelta(hours=2)))) == "2026-03-01T12:00:00.000000Z"
    assert xapi.timestamp(whole.replace(tzinfo=None)) == "2026-03-01T12:00:00.000000Z"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "PT0S"),
        (0.004, "PT0S"),
        (0.005, "PT0S"),  # half to even at the 0.01 s precision xAPI keeps
        (0.015, "PT0.02S"),
        (1.5, "PT1.5S"),
        (59.999, "PT1M"),
        (60, "PT1M"),
        (3600, "PT1H"),
        (3661.01, "PT1H1M1.01S"),
        (90061.25, "PT25H1M1.25S"),
        (events.MAX_SECONDS, "PT168H"),
    ],
)
def test_iso_duration(seconds: float, text: str) -> None:
    assert xapi.iso_duration(seconds) == text


@pytest.mark.parametrize(
    ("fraction", "percent"),
    [(0, 0), (0.005, 0), (0.29, 29), (0.57, 57), (0.999, 99), (0.9999999, 99), (1, 100)],
)
def test_progress_percent_is_floored_so_100_means_done(fraction: float, percent: int) -> None:
    assert xapi.progress_percent(fraction) == percent


def test_platform_and_session_context_on_every_statement() -> None:
    for event_type in xapi.MAPPED_EVENT_TYPES:
        for statement in statements(event_type):
            assert statement["context"]["platform"] == "StudyIn"
            assert set(statement) <= {"id", "actor", "verb", "object", "timestamp", "context", "result"}
            assert statement["verb"]["display"] == {"en-US": statement["verb"]["id"].rsplit("/", 1)[1]}


# --- selection, configuration, bad input -----------------------------------------------------------


def test_selection_forwards_only_the_chosen_types() -> None:
    mapper = StatementMapper(CONFIG, Selection.of(["material_complete", "ai_coach_feedback"]))
    (view,) = sample_rows("level_up")
    assert mapper.map(view) == Skipped(SkipReason.NOT_SELECTED, "level_up")
    assert not isinstance(mapper.map(sample_rows("material_complete")[0]), Skipped)
    assert Selection.all_learning_events().event_types == xapi.MAPPED_EVENT_TYPES
    assert StatementMapper(CONFIG).selection == Selection.all_learning_events()


def test_selection_names_what_is_wrong() -> None:
    with pytest.raises(SelectionError, match=r"'material_veiw' is unknown \(learning event types: "):
        Selection.of(["material_view", "material_veiw"])
    with pytest.raises(SelectionError, match="'system_metric' is a system event"):
        Selection.of(["system_metric"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("iri_base", "studyin.test"),
        ("iri_base", "ftp://studyin.test"),
        ("iri_base", "https://studyin.test/x?y=1"),
        ("iri_base", "https://studyin.test/#frag"),
        ("iri_base", "https://studyin.test/a b"),
        ("home_page", "/relative"),
    ],
)
def test_configuration_refuses_what_is_not_an_absolute_iri(field: str, value: str) -> None:
    arguments = {"iri_base": "https://xapi.studyin.test", "home_page": "https://studyin.test", field: value}
    with pytest.raises(ValueError, match=f"{field} must"):
        XapiConfig(**arguments)


def test_trailing_slash_of_the_base_is_dropped() -> None:
    config = XapiConfig(iri_base="https://xapi.studyin.test/v1/", home_page="https://studyin.test/")
    assert config.activity("xp") == "https://xapi.studyin.test/v1/activities/xp"
    assert config.home_page == "https://studyin.test"


def test_invalid_properties_skip_the_event_naming_the_field_without_the_value() -> None:
    (row,) = [r for r in sample_rows("material_progress") if r.properties["progress"] == 0.295]
    planted = "1.5"
    bad = row._replace(properties={**row.properties, "progress": 1.5})
    skipped = MAPPER.map(bad)
    assert isinstance(skipped, Skipped) and skipped.reason is SkipReason.INVALID_EVENT
    assert skipped.detail.startswith("material_progress.progress: ")
    assert planted not in skipped.detail
    missing = row._replace(properties={k: v for k, v in row.properties.items() if k != "material_type"})
    assert MAPPER.map(missing) == Skipped(
        SkipReason.INVALID_EVENT, "material_progress.material_type: Field required"
    )


def test_properties_of_other_models_and_unknown_keys_are_ignored() -> None:
    (row,) = sample_rows("achievement_unlocked")
    noisy = row._replace(properties={**row.properties, "progress": 0.5, "email": "x@y.z", "level": "n/a"})
    assert MAPPER.map(noisy) == MAPPER.map(row)


def test_session_id_of_the_session_span_fills_a_missing_event_field() -> None:
    (row,) = sample_rows("session_start")[:1]
    without = row._replace(properties={k: v for k, v in row.properties.items() if k != "session_id"})
    assert isinstance(without, EventRow) and without.session_id == SESSION
    assert MAPPER.map(without) == MAPPER.map(row)
