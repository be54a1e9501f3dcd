"""Custom events map to the row the generic rule gives (pure functions, no servers): their type and
properties from the schema's attributes only, their session from the built-in ``session_id`` attribute
(else the span's), like every event."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from studyin_analytics.aggregator.consumer.mapping import event_id, micros_of, rows_from_span, time_of
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.custom_schemas import NAME_PATTERN
from studyin_analytics.instrumentation.custom_tracking import custom_attributes, custom_properties

pytestmark = pytest.mark.unit

USER = "k:" + "a" * 32
SESSION_ATTR = semconv.FIELD_ATTRIBUTES["session_id"]
SPAN_SESSION = str(uuid.UUID(int=1))
EVENT_SESSION = str(uuid.UUID(int=2))
T0 = 1_764_800_000_000_000_000


def _reference_session(event_session: Any, span_session: Any) -> uuid.UUID | None:
    def parsed(text: Any) -> uuid.UUID | None:
        try:
            return None if text is None else uuid.UUID(str(text))
        except ValueError:
            return None

    if event_session is None or event_session == span_session:
        return parsed(span_session)
    return parsed(event_session) or parsed(span_session)


def _reference_type_and_properties(attributes: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, version = attributes.get(semconv.CUSTOM_SCHEMA), attributes.get(semconv.CUSTOM_VERSION)
    properties: dict[str, Any] = {"$version": version if isinstance(version, str) else ""}
    properties.update(custom_properties(attributes))
    if isinstance(name, str) and NAME_PATTERN.match(name):
        return name, properties
    properties["$schema"] = name[:200] if isinstance(name, str) else ""
    return semconv.CUSTOM_EVENT_TYPE, properties


NAMES_AND_PROPERTIES: list[tuple[Any, Any, dict[str, Any]]] = [
    ("org.example/case_completed", "1-0-0", {"case_id": "c1", "score": 7, "tags": ["a", "b"]}),
    ("not qualified", "1-0-0", {"case_id": "c1"}),
    ("org.example/case_completed", 3, {"$version": "sneaky", "passed": True}),
]
SESSIONS: list[tuple[Any, Any]] = [
    (None, None),
    (None, SPAN_SESSION),
    (EVENT_SESSION, None),
    (EVENT_SESSION, SPAN_SESSION),
    (SPAN_SESSION, SPAN_SESSION),
    ("not a uuid", SPAN_SESSION),
    ("not a uuid", None),
]


@pytest.mark.parametrize(("event_session", "span_session"), SESSIONS)
def test_custom_event_rows_follow_the_generic_rule(event_session: Any, span_session: Any) -> None:
    events = []
    for k, (name, version, props) in enumerate(NAMES_AND_PROPERTIES):
        attributes = custom_attributes("x", "y", props)
        attributes[semconv.CUSTOM_SCHEMA], attributes[semconv.CUSTOM_VERSION] = name, version
        attributes.update({semconv.USER_HASH: USER, semconv.USER_LRS_HASH: "k:" + "b" * 32})
        if event_session is not None:
            attributes[SESSION_ATTR] = event_session
        events.append(EventRecord(semconv.event_name(semconv.CUSTOM_EVENT_TYPE), T0 + k * 1000, attributes))
    events.append(EventRecord(semconv.event_name("material_view"), T0, {"studyin.material.id": "m"}))
    span_attributes: dict[str, Any] = {semconv.USER_HASH: USER}
    if span_session is not None:
        span_attributes[SESSION_ATTR] = span_session
    span = SpanRecord(
        b"t" * 16, b"s" * 8, None, "request", wire.SPAN_KIND_INTERNAL, T0, T0 + 10**9, 0, span_attributes,
        events, {"service.name": "test"},
    )  # fmt: skip
    rows = rows_from_span(span)
    assert len(rows) == len(events)
    for index, (row, event) in enumerate(itertools.islice(zip(rows, events, strict=True), 3)):
        event_type, properties = _reference_type_and_properties(event.attributes)
        time_us = micros_of(event.time_unix_nano)
        assert row.event_id == event_id(span.trace_id, span.span_id, index)
        assert (row.event_type, row.properties) == (event_type, properties)
        assert list(row.properties) == list(properties)  # the stored JSON's key order too
        assert (row.time_us, row.occurred_at, row.user_hash) == (time_us, time_of(time_us), USER)
        assert row.session_id == _reference_session(event_session, span_session)
    assert rows[3].event_type == "material_view"
