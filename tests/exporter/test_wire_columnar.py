"""The columnar batch layout (a prototype, not on the live path): what it encodes reads back as the row
layout reads the same records, and a damaged batch is a :class:`WireFormatError`."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings

from studyin_analytics.exporter import wire, wire_columnar
from studyin_analytics.exporter.wire import SpanRecord, WireFormatError
from tests.support.columnar import any_records, studyin_records
from tests.support.pipeline import PSEUDONYMIZER
from tests.support.workload import build

pytestmark = pytest.mark.unit


@settings(max_examples=300, deadline=None)
@given(any_records())
def test_a_columnar_batch_reads_back_as_the_row_layout_reads_the_same_records(
    records: list[SpanRecord],
) -> None:
    expected = wire.decode_batch(wire.encode(records))
    assert wire_columnar.decode_records(wire_columnar.encode(records)) == expected


@settings(max_examples=100, deadline=None)
@given(studyin_records())
def test_studyin_spans_round_trip(records: list[SpanRecord]) -> None:
    expected = wire.decode_batch(wire.encode(records))
    assert wire_columnar.decode_records(wire_columnar.encode(expected)) == expected


def test_the_workload_round_trips_and_is_smaller_than_its_rows() -> None:
    workload = build(PSEUDONYMIZER, users=60, seed=5, spans_per_entry=500)
    for entry in workload.entries:
        records = wire.decode_entry(entry)
        blob = wire_columnar.encode(records)
        assert wire_columnar.decode_records(blob) == records
        assert len(blob) < len(entry[wire.FIELD_DATA])


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"n": 1, "m": 0}),
        msgpack.packb({"n": 1, "m": 0, "tid": b"x" * 16, "sid": b"y" * 8, "pid": bytes(8), "hp": b"\x00"}),
    ],
)
def test_a_damaged_batch_is_a_wire_format_error(blob: bytes) -> None:
    with pytest.raises(WireFormatError):
        wire_columnar.decode_records(blob)


def test_a_truncated_column_is_a_wire_format_error() -> None:
    records = wire.decode_entry(build(PSEUDONYMIZER, users=3, seed=2).entries[0])
    batch = msgpack.unpackb(wire_columnar.encode(records))
    batch["et"] = batch["et"][:-8]
    with pytest.raises(WireFormatError):
        wire_columnar.decode_records(msgpack.packb(batch))
