"""Domain event models: types, limits, versions, attribute names."""

from __future__ import annotations

import typing
import uuid

import pytest
from pydantic import ValidationError

from studyin_analytics.instrumentation import events, semconv

pytestmark = pytest.mark.unit

VALID: dict[str, dict[str, object]] = {
    "session_start": {"session_id": uuid.uuid4(), "material_id": "cardio-101"},
    "session_end": {
        "session_id": uuid.uuid4(),
        "duration_s": 12.5,
        "xp_earned": 30,
        "materials_touched": ("cardio-101", "ecg-basics"),
        "end_reason": "timeout",
    },
    "material_view": {"material_id": "cardio-101", "material_type": "video"},
    "material_progress": {"material_id": "cardio-101", "material_type": "pdf", "progress": 0.5},
    "material_complete": {"material_id": "q-1", "material_type": "question_bank", "score": 1.0},
    "xp_awarded": {"xp_amount": 10, "xp_reason": "material_complete"},
    "level_up": {"level": 3, "total_xp": 1200},
    "achievement_unlocked": {"achievement_id": "first-week"},
    "streak_updated": {"streak_days": 7},
    "streak_broken": {"previous_streak_days": 7},
    "ai_coach_interaction": {
        "interaction_id": uuid.uuid4(),
        "latency_ms": 850.0,
        "tokens_in": 120,
        "tokens_out": 300,
        "model": "gpt-4o-mini",
        "topic_category": "cardiology",
    },
    "ai_coach_feedback": {"interaction_id": uuid.uuid4(), "rating": 5},
    "experiment_exposure": {
        "experiment_key": "coach-prompt",
        "experiment_version": 1,
        "variant": "treatment",
    },
    "api_request": {"route": "/items/{item_id}", "method": "GET", "status_code": 200, "duration_ms": 3.2},
    "system_metric": {"metric_name": "queue.depth", "metric_value": 42, "metric_unit": "1"},
}


def test_every_event_type_has_a_valid_example() -> None:
    assert set(VALID) == set(events.EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_event_flattens_to_declared_attributes(event_type: str) -> None:
    event = events.parse_event(event_type, VALID[event_type])
    attributes = event.attributes()
    assert attributes[semconv.EVENT_VERSION] == event.version >= 1
    for key, value in attributes.items():
        assert key in semconv.DECLARED_ATTRIBUTES
        assert isinstance(value, str | int | float | bool | list), (key, type(value))
        if key != semconv.EVENT_VERSION:
            assert semconv.ATTRIBUTE_FIELDS[key] in VALID[event_type]  # round trip for the aggregator


def test_models_have_no_free_text_fields() -> None:
    """Every text field refuses prose: a value with spaces fails validation."""
    checked = 0
    for event_type, model in events.EVENT_TYPES.items():
        for name, info in model.model_fields.items():
            args = typing.get_args(info.annotation) or (info.annotation,)
            if not any(a is str for a in args):
                continue
            data = dict(VALID[event_type])
            data[name] = "I feel unwell, my email is x@example.com"
            with pytest.raises(ValidationError):
                model.model_validate(data)
            checked += 1
    assert checked >= 8


def test_ai_coach_refuses_message_text() -> None:
    data = dict(VALID["ai_coach_interaction"], message="What is my diagnosis, dr@example.com?")
    with pytest.raises(ValidationError) as caught:
        events.AiCoachInteraction.model_validate(data)
    assert "message" in str(caught.value)


@pytest.mark.parametrize(
    ("event_type", "field", "bad"),
    [
        ("material_view", "material_type", "powerpoint"),
        ("material_view", "material_id", "Has Spaces And Text"),
        ("material_progress", "progress", 1.5),
        ("xp_awarded", "xp_amount", 0),
        ("xp_awarded", "xp_amount", "10"),  # strict numbers: no silent coercion
        ("xp_awarded", "xp_amount", True),
        ("ai_coach_feedback", "rating", 6),
        ("ai_coach_interaction", "latency_ms", float("nan")),
        ("ai_coach_interaction", "model", "a model with words"),
        ("session_end", "duration_s", -1.0),
        ("session_end", "end_reason", "bored"),
        ("api_request", "route", "/items/42?email=x@y.z"),
        ("api_request", "error_type", "ValueError: bad thing"),
        ("system_metric", "metric_value", float("inf")),
        ("streak_updated", "streak_days", 0),
    ],
)
def test_invalid_values_are_rejected(event_type: str, field: str, bad: object) -> None:
    data = dict(VALID[event_type])
    data[field] = bad
    with pytest.raises(ValidationError) as caught:
        events.parse_event(event_type, data)
    assert [e["loc"][0] for e in caught.value.errors()] == [field]


def test_unknown_event_type() -> None:
    with pytest.raises(KeyError, match="unknown event type"):
        events.parse_event("nope", {})


def test_field_names_map_to_unique_attributes() -> None:
    attributes = list(semconv.FIELD_ATTRIBUTES.values())
    assert len(attributes) == len(set(attributes))
    assert all(a.startswith(semconv.NAMESPACE) for a in attributes)
    assert semconv.USER_HASH == "user.hash"
