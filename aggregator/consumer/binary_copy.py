"""The raw events' binary ``COPY`` payload, built per column (PyArrow and NumPy), not per row.

The same PostgreSQL binary ``COPY`` stream asyncpg's ``copy_records_to_table`` writes
(https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format"), from a handful of
vectorized calls per batch: one list per column, converted once (``pa.array``), the fixed-width
parts of every row (field count, lengths, event id, time) laid out in one NumPy structured array,
and each row concatenated from its parts by one ``binary_join_element_wise``, whose data buffer,
rows back to back, is the payload.

**Not on the aggregator's path** (measured, docs/aggregator.md#per-batch-work-measured-issue-25): from row
tuples it costs the aggregator as much CPU as asyncpg's per-row ``COPY`` (~1.3 us a row either
way, sending included): pulling the columns out of the tuples and converting them is most of it.
It is here for a columnar wire, whose columns arrive as arrays (``studyin-analytics bench --only
aggregator`` measures it against asyncpg's on the bench rows, same run).

Column types are those of :data:`.mapping.RAW_COLUMNS`: ``uuid`` (16 bytes), ``timestamptz``
(big-endian microseconds since 2000-01-01 UTC), ``text`` (UTF-8), ``uuid`` or NULL, and ``jsonb``
(version byte 1, then the JSON text). Text PyArrow refuses (a lone surrogate) raises
:class:`Unencodable`: copy those records through asyncpg, whose codecs report them as before.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .mapping import RawRecord

__all__ = ["HEADER", "TRAILER", "Unencodable", "chunks", "encode_rows"]

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
"""Signature, flags (no OIDs), header extension length."""
TRAILER = struct.pack(">h", -1)

_PG_EPOCH_US = 946_684_800_000_000
"""2000-01-01 UTC in microseconds since the Unix epoch (PostgreSQL's timestamp origin)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CHUNK = 256 * 1024
_FIELDS = 6
_NULL = -1
_JSONB_VERSION = 1

# The fixed-width parts of a row between its variable ones (big-endian, packed).
_LEAD = np.dtype(
    [
        ("fields", ">i2"),
        ("id_len", ">i4"),
        ("id", "V16"),
        ("at_len", ">i4"),
        ("at", ">i8"),
        ("type_len", ">i4"),
    ]
)
_USER = np.dtype([("user_len", ">i4")])
_SESSION = np.dtype([("session_len", ">i4")])
_PROPS = np.dtype([("props_len", ">i4"), ("version", "u1")])


class Unencodable(ValueError):
    """A record this encoder cannot lay out (copy it through asyncpg instead)."""


def _parts(array: np.ndarray) -> pa.Array:
    """A structured array as a binary column: one value of ``itemsize`` bytes per row."""
    width = array.dtype.itemsize
    fixed = pa.Array.from_buffers(pa.binary(width), len(array), [None, pa.py_buffer(array.tobytes())])
    return fixed.cast(pa.binary())


def _lengths(column: pa.Array, null_length: int = _NULL) -> np.ndarray:
    """Byte lengths of a binary column, ``null_length`` for NULLs."""
    lengths = pc.fill_null(pc.binary_length(column), null_length)
    return np.asarray(lengths.to_numpy(zero_copy_only=False), np.int32)


def encode_rows(records: Sequence[RawRecord], times_us: Sequence[int] | None = None) -> pa.Buffer:
    """The binary ``COPY`` rows of ``records`` (no header, no trailer), back to back.

    ``times_us``: each record's ``occurred_at`` as microseconds since the Unix epoch, when the
    caller has them (``EventRow.time_us``); else computed here, ~0.4 us a row (PyArrow's own
    conversion of aware datetimes costs ~0.7-1.2 us a row, most of this encoder's time).
    """
    count = len(records)
    if not count:
        return pa.py_buffer(b"")
    # One list per column; not zip(*records), whose 10,000 iterators each wake the cyclic collector.
    types, users, properties = [r[2] for r in records], [r[3] for r in records], [r[5] for r in records]
    try:
        id_bytes = b"".join([r[0].bytes for r in records])
        sessions = [None if r[4] is None else r[4].bytes for r in records]
        session_bytes = pa.array(sessions, pa.binary(), size=count)
        if times_us is None:
            times_us = [(r[1] - _EPOCH) // _MICROSECOND for r in records]
        at = np.array(times_us, np.int64)
        type_col = pa.array(types, pa.string(), size=count).cast(pa.binary())
        user_col = pa.array(users, pa.string(), size=count).cast(pa.binary())
        props_col = pa.array(properties, pa.string(), size=count).cast(pa.binary())
    except (pa.ArrowException, UnicodeError, TypeError, AttributeError, OverflowError) as exc:
        raise Unencodable(str(exc)) from exc
    if len(at) != count or type_col.null_count or props_col.null_count:
        raise Unencodable("a NULL in a NOT NULL column")
    lead = np.empty(count, _LEAD)
    lead["fields"] = _FIELDS
    lead["id_len"] = 16
    lead["id"] = np.frombuffer(id_bytes, "V16")
    lead["at_len"] = 8
    lead["at"] = at - _PG_EPOCH_US
    lead["type_len"] = _lengths(type_col)
    user = np.empty(count, _USER)
    user["user_len"] = _lengths(user_col)
    session = np.empty(count, _SESSION)
    session["session_len"] = _lengths(session_bytes)
    props = np.empty(count, _PROPS)
    props["props_len"] = _lengths(props_col) + 1  # the jsonb version byte
    props["version"] = _JSONB_VERSION
    empty = pa.scalar(b"", pa.binary())
    joined: Any = pc.binary_join_element_wise(
        _parts(lead),
        type_col,
        _parts(user),
        pc.fill_null(user_col, empty),
        _parts(session),
        pc.fill_null(session_bytes, empty),
        _parts(props),
        props_col,
        b"",
    )
    offsets = np.frombuffer(joined.buffers()[1], np.int32, count + 1, joined.offset * 4)
    data: pa.Buffer = joined.buffers()[2]
    return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


async def chunks(rows: pa.Buffer) -> AsyncIterator[Any]:
    """A whole ``COPY`` stream around ``rows``, as asyncpg's ``copy_to_table`` reads a source."""
    yield HEADER
    view = memoryview(rows)
    # In pieces, as asyncpg's own COPY sends: it waits for the socket between them, where one
    # write of megabytes sits in the transport's buffer, moved down after every partial send.
    for start in range(0, len(view), _CHUNK):
        yield view[start : start + _CHUNK]
    yield TRAILER
