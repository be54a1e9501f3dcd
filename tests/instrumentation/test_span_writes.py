"""Attributes written onto SDK spans directly end up as the SDK's own calls would leave them."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.span_writes import clean_once, write_clean

pytestmark = pytest.mark.unit

PSEUDONYM = "k1:0123456789abcdef0123456789abcdef"

_values = st.one_of(
    st.text(max_size=40),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=5), max_size=3),
    st.none(),
)
_attribute_sets = st.dictionaries(st.text(min_size=1, max_size=12), _values, max_size=6)


def _ended(limits: SpanLimits | None, write: Any) -> ReadableSpan:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits) if limits is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("test").start_span("GET", attributes={"before": 1})
    write(span)
    span.end()
    (finished,) = exporter.get_finished_spans()
    return finished


def _both(
    first: dict[str, Any] | None,
    second: dict[str, Any],
    pseudonym: str | None,
    name: str | None,
    limits: SpanLimits | None = None,
) -> tuple[ReadableSpan, ReadableSpan]:
    def public(span: Any) -> None:
        merged = {**(first or {}), **second}
        if pseudonym is not None:
            merged[semconv.USER_HASH] = pseudonym
        span.set_attributes(merged)
        if name is not None:
            span.update_name(name)

    def direct(span: Any) -> None:
        write_clean(span, None if first is None else clean_once(first), clean_once(second), pseudonym, name)

    return _ended(limits, public), _ended(limits, direct)


@given(first=st.one_of(st.none(), _attribute_sets), second=_attribute_sets, user=st.booleans())
def test_direct_writes_equal_the_sdk_calls(
    first: dict[str, Any] | None, second: dict[str, Any], user: bool
) -> None:
    public, direct = _both(first, second, PSEUDONYM if user else None, "GET /materials/{material_id}")
    assert dict(direct.attributes or {}) == dict(public.attributes or {})
    assert direct.name == public.name


def test_without_a_name_the_name_stays() -> None:
    public, direct = _both(None, {"http.route": "_OTHER"}, None, None)
    assert direct.name == public.name == "GET"


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(max_span_attribute_length=4),  # the SDK truncates: its own call does it
        SpanLimits(max_span_attributes=3),  # the SDK evicts the oldest: its own call does it
    ],
)
def test_limits_are_the_sdks(limits: SpanLimits) -> None:
    second = {"http.route": "/materials/{material_id}", "http.response.status_code": 200, "x": "long value"}
    public, direct = _both({"http.request.method": "GET"}, second, PSEUDONYM, "GET /m", limits)
    assert dict(direct.attributes or {}) == dict(public.attributes or {})
    assert direct.dropped_attributes == public.dropped_attributes


def test_an_ended_span_is_not_changed() -> None:
    provider = TracerProvider()
    span = provider.get_tracer("test").start_span("GET")
    span.end()
    write_clean(span, None, {"http.route": "/x"}, PSEUDONYM, "GET /x")
    assert isinstance(span, ReadableSpan)
    assert dict(span.attributes or {}) == {}
    assert span.name == "GET"


class _Subclass(SdkSpan):
    """A span type of its own: its set_attributes is not the SDK's, so it is called."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def set_attributes(self, attributes: Any) -> None:
        self.calls.append(dict(attributes))
        super().set_attributes(attributes)


def test_a_span_subclass_gets_the_public_calls() -> None:
    span = _Subclass("GET", context=None)
    span.start()
    write_clean(span, {"a": 1}, {"b": "2"}, PSEUDONYM, "GET /b")
    assert _Subclass.calls == [{"a": 1, "b": "2", semconv.USER_HASH: PSEUDONYM}]
    assert span.name == "GET /b"


def test_clean_once_cleans_as_the_sdk() -> None:
    assert clean_once({"a": [1, 2], "b": "x", "c": 3}) == {"a": (1, 2), "b": "x", "c": 3}
