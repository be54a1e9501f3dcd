"""The wire format as pure functions (no servers): what is encoded decodes to the same records,
through a bus entry's fields too, and a damaged batch is a :class:`WireFormatError`."""

from __future__ import annotations

import msgpack
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


# --- version 2: log-record events ------------------------------------------------------------------


def _log_events() -> list[SpanRecord]:
    resource = {"service.name": "unit"}
    user = PSEUDONYMIZER.pseudonymize("learner-2")
    return [
        wire.log_record(
            b"\x07" * 16,
            b"\x01" * 16,
            b"\x02" * 8,
            "studyin.material_view",
            1_700_000_002_000_000_000,
            {"user.hash": user, "studyin.material.id": "cardio-101", "nested": {"a": (1, 2)}},
            resource,
        ),
        wire.log_record(
            b"\x08" * 16, None, None, "studyin.xp_awarded", 1_700_000_003_000_000_000, {}, resource
        ),
    ]


def test_spans_and_log_events_round_trip_in_one_version_2_entry() -> None:
    records = [*_records(), *_log_events()]
    fields = _as_read(wire.entry_fields(wire.encode_records(records), len(records)))
    assert fields[wire.FIELD_VERSION] == b"2"
    assert fields[wire.FIELD_COUNT] == str(len(records)).encode()
    back = wire.decode_entry(fields)
    assert back == records  # spans first, then log events, as encoded
    uid_read_as_trace = back[-2]
    assert uid_read_as_trace.trace_id == b"\x07" * 16 and uid_read_as_trace.span_id == wire.LOG_SPAN_ID
    assert uid_read_as_trace.log == wire.LogOrigin(b"\x01" * 16, b"\x02" * 8)
    # A rewrite (erasure, spool scrub) keeps log events as log rows.
    assert wire.decode_batch(wire.encode_records(back)) == records


def test_version_1_entries_still_decode_and_a_layout_must_match_its_version() -> None:
    records = _records()
    v2 = wire.encode_records(records)
    v1 = msgpack.packb(msgpack.unpackb(v2, raw=False)[:2], use_bin_type=True)
    v1_fields = _as_read(wire.entry_fields(v1, len(records)))
    assert v1_fields[wire.FIELD_VERSION] == b"1"  # a v1 blob from an old spool keeps its version
    assert wire.decode_entry(v1_fields) == records
    for version, blob in ((b"1", v2), (b"2", v1)):
        with pytest.raises(WireFormatError, match="layout"):
            wire.decode_entry({**v1_fields, wire.FIELD_VERSION: version, wire.FIELD_DATA: blob})
    for version in (b"3", b"0", b""):
        with pytest.raises(WireFormatError, match="unsupported wire version"):
            wire.decode_entry({**v1_fields, wire.FIELD_VERSION: version})


def test_a_damaged_log_row_is_a_wire_format_error() -> None:
    resources: list[object] = [{}]
    good = [b"\x07" * 16, None, None, "studyin.xp_awarded", 1, {}, 0]
    for bad in (
        [b"\x07" * 15, *good[1:]],
        [good[0], b"\x01" * 8, *good[2:]],
        [*good[:2], b"\x02" * 7, *good[3:]],
        [*good[:3], 12, *good[4:]],
        [*good[:5], [], good[6]],
        [*good[:6], 3],
        good[:6],
    ):
        blob = msgpack.packb([resources, [], [bad]], use_bin_type=True)
        with pytest.raises(WireFormatError):
            wire.decode_batch(blob)
