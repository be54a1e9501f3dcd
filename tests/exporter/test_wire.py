"""The wire format as pure functions (no servers): what is encoded decodes to the same records,
through a bus entry's fields too, and a damaged batch is a :class:`WireFormatError`."""

from __future__ import annotations

import pytest

from studyin_analytics.exporter import wire
from studyin_analytics.exporter.wire import EventRecord, SpanRecord, WireFormatError
from tests.support.pipeline import PSEUDONYMIZER
from tests.support.workload import bad_spans, build

pytestmark = pytest.mark.unit


def _records() -> list[SpanRecord]:
    server = SpanRecord(
        b"\x01" * 16,
        b"\x02" * 8,
        b"\x03" * 8,
        "GET /materials/{id}",
        wire.SPAN_KIND_SERVER,
        1_700_000_000_000_000_000,
        1_700_000_000_250_000_000,
        0,
        {"http.route": "/materials/{id}", "http.request.method": "GET", "http.response.status_code": 200},
        [],
        {"service.name": "unit"},
    )
    event = SpanRecord(
        b"\x04" * 16,
        b"\x05" * 8,
        None,
        "studyin.event",
        wire.SPAN_KIND_INTERNAL,
        1_700_000_001_000_000_000,
        1_700_000_001_000_001_000,
        0,
        {"user.hash": PSEUDONYMIZER.pseudonymize("learner-1")},
        [EventRecord("studyin.xp_awarded", 1_700_000_001_000_000_500, {"studyin.xp.amount": 10})],
        {"service.name": "unit"},
    )
    return [server, event, *bad_spans(PSEUDONYMIZER)]


def test_records_round_trip_through_a_batch() -> None:
    records = _records()
    assert wire.decode_batch(wire.encode_records(records)) == records


def test_records_round_trip_through_a_bus_entry() -> None:
    records = _records()
    fields = _as_read(wire.entry_fields(wire.encode_records(records), len(records)))
    assert wire.decode_entry(fields) == records
    with pytest.raises(WireFormatError, match="unsupported wire version"):
        wire.decode_entry({**fields, wire.FIELD_VERSION: b"999"})


def test_a_generated_workload_decodes_to_its_events() -> None:
    workload = build(PSEUDONYMIZER, users=20, seed=7)
    decoded = [span for entry in workload.entries for span in wire.decode_entry(_as_read(entry))]
    events = sum(len(span.events) for span in decoded)
    servers = sum(1 for span in decoded if span.kind == wire.SPAN_KIND_SERVER)
    assert events + servers >= workload.event_count > 0


def test_a_damaged_batch_is_a_wire_format_error() -> None:
    blob = wire.encode_records(_records())
    for damaged in (b"", blob[: len(blob) // 2], b"\xc1" + blob[1:]):
        with pytest.raises(WireFormatError):
            wire.decode_batch(damaged)


def _as_read(fields: dict[object, object]) -> dict[bytes, bytes]:
    """An entry's fields as redis-py returns them (bytes keys and values)."""
    out: dict[bytes, bytes] = {}
    for key, value in fields.items():
        k = key.encode() if isinstance(key, str) else key
        v = value.encode() if isinstance(value, str) else value
        assert isinstance(k, bytes) and isinstance(v, bytes | bytearray)
        out[k] = bytes(v)
    return out
