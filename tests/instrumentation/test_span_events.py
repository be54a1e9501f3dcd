"""``span_events.add_event`` records ``KnownClean`` attributes as ``Span.add_event`` records them (name,
timestamp, attributes, dropped count) on SDK spans under any limits; anything else takes ``add_event``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext

from studyin_analytics.instrumentation.span_events import CleanAttributes, KnownClean, add_event

pytestmark = pytest.mark.unit

_VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.text(max_size=10), max_size=4).map(tuple),
)


def _recorded(limits: SpanLimits, attributes: dict[str, Any], clean: bool) -> list[tuple[Any, ...]]:
    span = TracerProvider(span_limits=limits).get_tracer("t").start_span("s")
    if clean:
        add_event(span, "studyin.x", KnownClean(attributes), 123)
        add_event(span, "studyin.y", KnownClean(attributes))
    else:
        span.add_event("studyin.x", dict(attributes), timestamp=123)
        span.add_event("studyin.y", dict(attributes))
    span.end()
    events = span.events
    return [
        (
            e.name,
            e.timestamp if e.name == "studyin.x" else None,
            dict(e.attributes or {}),
            e.dropped_attributes,
        )
        for e in events
    ]


@settings(max_examples=100, deadline=None)
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=20), _VALUES, max_size=8),
    max_attributes=st.sampled_from([None, 3, 128]),
    max_length=st.sampled_from([None, 5]),
)
def test_clean_events_equal_add_event(
    attributes: dict[str, Any], max_attributes: int | None, max_length: int | None
) -> None:
    limits = SpanLimits(max_event_attributes=max_attributes, max_attribute_length=max_length)
    assert _recorded(limits, attributes, clean=True) == _recorded(limits, attributes, clean=False)


def test_clean_events_are_immutable_and_timed() -> None:
    span = TracerProvider().get_tracer("t").start_span("s")
    add_event(span, "studyin.x", KnownClean({"a": 1}))
    add_event(
        span, "studyin.y", {"a": [1, 2]}
    )  # not marked clean: the SDK cleans it (a list becomes a tuple)
    span.end()
    clean, other = span.events
    assert type(clean.attributes) is CleanAttributes and clean.timestamp > 0
    assert type(other.attributes) is not CleanAttributes and dict(other.attributes or {}) == {"a": (1, 2)}
    with pytest.raises(TypeError):
        clean.attributes["b"] = 2  # type: ignore[index]
    copied = copy.deepcopy(clean.attributes)
    assert dict(copied) == {"a": 1} and copied.dropped == 0


def test_other_spans_get_add_event() -> None:
    span = NonRecordingSpan(SpanContext(1, 2, is_remote=False))
    add_event(span, "studyin.x", KnownClean({"a": 1}))  # no error, nothing recorded
    ended = TracerProvider().get_tracer("t").start_span("s")
    ended.end()
    add_event(ended, "studyin.x", KnownClean({"a": 1}))  # an ended span: the SDK's warning, nothing recorded
    assert not ended.events
