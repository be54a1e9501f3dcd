"""Server-free checks of the one wire record -> events rule and the one wire encoder."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from studyin_analytics.aggregator.consumer.mapping import rows_from_span
from studyin_analytics.exporter import bus, wire
from studyin_analytics.exporter.event_types import SERVER_SPAN_INDEX, span_events
from studyin_analytics.instrumentation import semconv

pytestmark = pytest.mark.unit

USER = "k1:" + "b" * 64


def _span() -> wire.SpanRecord:
    events = [
        wire.EventRecord("studyin.material_view", 1_700_000_000_123_456_789, {"studyin.material_id": "m1"}),
        wire.EventRecord("not.a.domain.event", 1_700_000_000_000_000_000, {}),
        wire.EventRecord("studyin.xp_awarded", 1_700_000_001_000_000_500, {semconv.USER_HASH: "other"}),
    ]
    return wire.SpanRecord(
        b"\x01" * 16,
        b"\x02" * 8,
        None,
        "GET /r",
        wire.SPAN_KIND_SERVER,
        1_700_000_000_000_000_000,
        1_700_000_002_000_000_000,
        wire.STATUS_UNSET,
        {
            semconv.USER_HASH: USER,
            "http.request.method": "GET",
            "http.route": "/r",
            "http.response.status_code": 200,
        },
        events,
        {"service.name": "t"},
    )


def test_span_events_lists_domain_events_then_the_request() -> None:
    found = span_events(_span())
    assert [(index, kind) for index, kind, *_ in found] == [
        (0, "material_view"),
        (2, "xp_awarded"),
        (SERVER_SPAN_INDEX, "api_request"),
    ]
    assert [user for *_, user, _ in found] == [USER, "other", USER]
    assert [kind for _, kind, *_ in span_events(_span(), "xp_awarded")] == ["xp_awarded"]


def test_bus_events_and_aggregator_rows_agree() -> None:
    span = _span()
    fields = wire.entry_fields(wire.encode([span]), 1)
    shown = bus.events_of_entry("s", "1-0", fields)
    rows = rows_from_span(wire.decode_entry(fields)[0])
    assert [e.event_type for e in shown] == [r.event_type for r in rows]
    assert [e.time for e in shown] == [r.occurred_at for r in rows]
    times = [e.time_unix_nano for e in span.events if e.name.startswith("studyin.")]
    for event, ns in zip(shown, times, strict=False):
        assert event.time == datetime.fromtimestamp(ns / 1e9, tz=UTC)  # the bus reads' earlier rounding
    assert shown[-1].attributes[semconv.FIELD_ATTRIBUTES["route"]] == "/r"
    assert semconv.USER_HASH not in shown[0].attributes


def test_one_encoder_round_trips_records() -> None:
    span = _span()
    (back,) = wire.decode_batch(wire.encode([span]))
    assert back.trace_id == span.trace_id and back.attributes == span.attributes
    assert [tuple(e) for e in back.events] == [tuple(e) for e in span.events]
    assert wire.encode_records is wire.encode and wire.encode_readable_spans is wire.encode
