"""The log-record carrier's routing rule (issue 16): span events where the span is a short HTTP
request, log records wherever an event would wait (no span, a session span, a WebSocket)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.trace import SpanKind

from studyin_analytics.instrumentation import semconv
from tests.support.log_carrier import Carried
from tests.support.pipeline import PSEUDONYMIZER

pytestmark = pytest.mark.unit

USER = "student-log-1"


def _attributes(record: ReadableLogRecord) -> dict[str, Any]:
    return dict(record.log_record.attributes or {})


def test_without_a_span_events_are_log_records_with_a_uid(carried: Carried) -> None:
    carried.tracker.xp_awarded(USER, 10, "material_complete")
    carried.tracker.xp_awarded(USER, 10, "material_complete")
    assert carried.names() == ["studyin.xp_awarded"] * 2
    first, second = (_attributes(r) for r in carried.records())
    assert first["studyin.xp.amount"] == 10 and first[semconv.USER_HASH] == PSEUDONYMIZER.pseudonymize(USER)
    uids = {first[semconv.EVENT_UID], second[semconv.EVENT_UID]}
    assert len(uids) == 2 and all(len(u) == 32 and int(u, 16) >= 0 for u in uids)  # random, per event
    assert all(r.log_record.timestamp for r in carried.records())
    assert carried.pipeline.spans() == []  # no standalone span any more


def test_a_session_outside_a_request_sends_its_events_at_once_and_keeps_its_span(carried: Carried) -> None:
    with carried.tracker.session(USER) as session:
        carried.tracker.material_view(USER, "cardio-101", "video", session=session)
        assert carried.names() == ["studyin.session_start", "studyin.material_view"]  # already left
        session_context = session.span.get_span_context()
    # Correlated to the session's span (no other span was current).
    for record in carried.records():
        assert record.log_record.trace_id == session_context.trace_id
        assert record.log_record.span_id == session_context.span_id
    # session_end leaves on the session span, which carries the session's duration.
    assert carried.span_events(semconv.LEARNING_SESSION_SPAN) == ["studyin.session_end"]


def test_a_short_request_span_carries_its_events(carried: Carried) -> None:
    with carried.tracer.start_as_current_span(
        "GET /materials/{id}", kind=SpanKind.SERVER, attributes={"http.request.method": "GET"}
    ) as span:
        carried.tracker.material_view(USER, "cardio-101", "video")
        request_context = span.get_span_context()
    assert carried.span_events("GET /materials/{id}") == ["studyin.material_view"]
    assert carried.records() == []
    assert request_context.is_valid


@pytest.mark.parametrize(
    ("kind", "attributes"),
    [
        (
            SpanKind.SERVER,
            {"url.scheme": "wss", "http.request.method": "GET"},
        ),  # a WebSocket upgrade kept open
        (SpanKind.SERVER, {"http.scheme": "ws"}),  # the stock ASGI span of a WebSocket: no method
        (SpanKind.INTERNAL, {"http.request.method": "GET"}),  # any other span may live long
        (SpanKind.CONSUMER, {}),
    ],
)
def test_long_lived_spans_do_not_hold_events(
    carried: Carried, kind: SpanKind, attributes: dict[str, Any]
) -> None:
    with carried.tracer.start_as_current_span("socket", kind=kind, attributes=attributes) as span:
        carried.tracker.ai_coach_interaction(
            USER,
            latency_ms=120.0,
            tokens_in=10,
            tokens_out=20,
            model="coach-small",
            topic_category="cardiology",
        )
        context = span.get_span_context()
        assert carried.names() == ["studyin.ai_coach_interaction"]  # left while the span is open
    (record,) = carried.records()
    assert (record.log_record.trace_id, record.log_record.span_id) == (context.trace_id, context.span_id)
    assert carried.span_events("socket") == []


def test_the_session_span_current_is_not_a_request(carried: Carried) -> None:
    from opentelemetry import trace

    with carried.tracker.session(USER) as session, trace.use_span(session.span, end_on_exit=False):
        carried.tracker.material_view(USER, "cardio-101", "video", session=session)
    assert carried.names() == ["studyin.session_start", "studyin.material_view"]
    assert carried.span_events(semconv.LEARNING_SESSION_SPAN) == ["studyin.session_end"]
