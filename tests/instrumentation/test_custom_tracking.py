"""tracker.custom validates against the local registry (no I/O) and the privacy guard lets custom
attributes through exactly as the registered schema declares them."""

from __future__ import annotations

from typing import Any

import pytest

from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.custom_schemas import (
    EMPTY_REGISTRY,
    CompiledSchema,
    CustomRegistry,
    describe_errors,
    validate_event,
)
from studyin_analytics.instrumentation.privacy import PrivacyGuard, is_pseudonym
from studyin_analytics.instrumentation.tracker import EventRejected, StudyInTracker
from tests.support.custom_events import CASE, case_schema
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

pytestmark = pytest.mark.unit
P = semconv.CUSTOM_PROPERTY_PREFIX


def registry() -> CustomRegistry:
    schema = case_schema()
    schema["properties"]["patient_ref"] = {"type": "string", "maxLength": 64, "x-studyin-pseudonymous": True}
    schema["properties"]["tags"] = {
        "type": "array",
        "maxItems": 3,
        "items": {"type": "string", "maxLength": 40},
    }
    return CustomRegistry({(CASE, "1-0-0"): CompiledSchema.compile(CASE, "1-0-0", schema)})


def tracker(pipeline: Pipeline, lenient: bool = False) -> StudyInTracker:
    t = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, lenient=lenient)
    t.use_custom_registry(registry)
    return t


def test_a_valid_custom_event_is_recorded_with_its_properties_in_their_namespace() -> None:
    pipeline = Pipeline()
    props = {"case_id": "c1", "score": 88.5, "passed": True, "tags": ["a", "b"]}
    tracker(pipeline).custom(CASE, "1-0-0", props, user_id=42)
    (event,) = pipeline.span(semconv.STANDALONE_EVENT_SPAN).events
    assert event.name == "studyin.custom"
    attributes = dict(event.attributes or {})
    assert attributes[semconv.CUSTOM_SCHEMA] == CASE and attributes[semconv.CUSTOM_VERSION] == "1-0-0"
    assert attributes[P + "score"] == 88.5 and attributes[P + "tags"] == ("a", "b")
    assert attributes[semconv.USER_HASH] == PSEUDONYMIZER.pseudonymize("42")


@pytest.mark.parametrize(
    ("name", "version", "props"),
    [
        (CASE, "1-0-0", {"case_id": "c", "score": 500}),
        (CASE, "1-0-0", {"case_id": "c", "score": 5, "email": "x@y.org"}),
        (CASE, "1-0-1", {"case_id": "c", "score": 5}),
        ("case", "1-0-0", {}),
        (CASE, "1-0-0", {"score": "5"}),
    ],
)
def test_an_invalid_custom_event_is_refused_with_the_one_reason(name: str, version: str, props: Any) -> None:
    pipeline = Pipeline()
    expected = describe_errors(validate_event(registry(), name, version, props))
    with pytest.raises(EventRejected) as rejected:
        tracker(pipeline).custom(name, version, props, user_id=1)
    assert rejected.value.reasons == expected and expected
    lenient = tracker(pipeline, lenient=True)
    assert lenient.custom(name, version, props, user_id=1) is None
    assert lenient.dropped_events == 1 and pipeline.spans() == []


def test_the_guard_allows_exactly_what_the_schema_declares() -> None:
    guard = PrivacyGuard(PSEUDONYMIZER, custom_registry=registry)
    attributes = {
        semconv.CUSTOM_SCHEMA: CASE,
        semconv.CUSTOM_VERSION: "1-0-0",
        P + "case_id": "c1 mail me at a.b@example.org",
        P + "score": 12,
        P + "passed": "yes",  # declared boolean: refused
        P + "undeclared": 1,
        P + "patient_ref": "patient-7",
        P + "tags": ["x"],
        "studyin.custom.other": "x",
    }
    out = guard.clean(attributes)
    assert out[P + "score"] == 12 and out[P + "tags"] == ["x"]
    assert "example.org" not in out[P + "case_id"]
    assert P + "passed" not in out and P + "undeclared" not in out and "studyin.custom.other" not in out
    assert out[P + "patient_ref"] == PSEUDONYMIZER.pseudonymize("patient-7") and is_pseudonym(
        out[P + "patient_ref"]
    )
    assert (
        guard.clean({**attributes, P + "patient_ref": out[P + "patient_ref"]})[P + "patient_ref"]
        == out[P + "patient_ref"]
    )  # not hashed twice


def test_without_the_schema_the_guard_lets_no_custom_property_through() -> None:
    attributes = {semconv.CUSTOM_SCHEMA: CASE, semconv.CUSTOM_VERSION: "1-0-0", P + "score": 12}
    assert PrivacyGuard(PSEUDONYMIZER, custom_registry=lambda: EMPTY_REGISTRY).clean(attributes) == {
        semconv.CUSTOM_SCHEMA: CASE,
        semconv.CUSTOM_VERSION: "1-0-0",
    }
    assert PrivacyGuard(PSEUDONYMIZER).clean({semconv.CUSTOM_SCHEMA: "free text here", P + "x": 1}) == {}
    assert PrivacyGuard(None, custom_registry=registry).clean(
        {semconv.CUSTOM_SCHEMA: CASE, semconv.CUSTOM_VERSION: "1-0-0", P + "patient_ref": "p"}
    ) == {semconv.CUSTOM_SCHEMA: CASE, semconv.CUSTOM_VERSION: "1-0-0"}
