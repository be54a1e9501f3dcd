"""A columnar layout for one export batch (issue 25's design, measured; **not on the live path**).

The row layout of :mod:`.wire` (msgpack of one list per span, attribute dictionaries inside) makes
every reader pay per span and per event in Python. This layout writes a batch as columns, one array
per field, so a reader can load a column with one call (NumPy ``frombuffer``, ``pa.array``) and
map and count with vectorized operations (``aggregator/consumer/columnar.py``).

It is a prototype: no writer uses it and no reader of the bus accepts it (:data:`.wire.READABLE_VERSIONS`
does not list it). Figures and limits: docs/aggregator.md ("A columnar batch, measured").

Layout: msgpack of one map with these keys (fixed-width arrays are little-endian bytes):

* ``n``, ``m``: spans (log events included, after the spans as in the row layout) and span events;
* ``res``: the resource attribute maps; ``ri``: uint32 resource index per span;
* ``tid``, ``sid``: the trace ids (16 B each) and span ids (8 B each) back to back; ``pid``: parent
  span ids (8 zero bytes when absent) and ``hp``: one byte per span, 1 when it has a parent;
* ``names`` + ``ni``: the distinct span names and a uint32 index per span;
* ``k``, ``sc``: uint8 kind and status code per span; ``st``, ``en``: int64 start and end (ns);
* ``sa``: the span attributes, one column per key (:func:`_columns`);
* ``ec``: uint32 number of events per span; ``enames`` + ``eni``: the distinct event names and a
  uint32 index per event; ``et``: int64 event times; ``ea``: the event attributes' columns;
* ``log``: the log-record events (spans read as :func:`.wire.log_record`): the positions (uint32)
  of those spans, and their origin trace and span ids (16 and 8 bytes or nil).

An attribute column is ``[positions, values]``: ``values`` the values in row order (any msgpack value,
as in the row layout), ``positions`` the uint32 rows having the key, or nil when every row has it (the
common case). A key present with a nil value stays distinct from an absent key.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any

import msgpack

from .wire import EventRecord, LogOrigin, SpanRecord, WireFormatError

__all__ = ["COLUMNAR_VERSION", "decode", "decode_records", "encode"]

COLUMNAR_VERSION = b"c1"
"""Its ``v`` field, were it written to the bus (no writer does; no reader accepts it)."""

_LITTLE = sys.byteorder == "little"
_NO_PARENT = bytes(8)


def _packed(typecode: str, values: Sequence[int]) -> bytes:
    """``values`` as a little-endian array of ``typecode`` (``B``, ``I``: uint32, ``q``: int64)."""
    packed = array(typecode, values)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


def _unpacked(typecode: str, data: Any, length: int) -> array[int]:
    if not isinstance(data, bytes):
        raise WireFormatError("a fixed-width column is not bytes")
    values = array(typecode)
    values.frombytes(data)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        values.byteswap()
    if len(values) != length:
        raise WireFormatError("a fixed-width column has the wrong length")
    return values


# Unsigned 32-bit typecode: "I" is 4 bytes on every platform CPython supports, "L" is not.
assert array("I").itemsize == 4 and array("q").itemsize == 8


def _columns(maps: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The columns ``{key: [positions | None, values]}`` of a sequence of attribute maps."""
    positions: dict[str, list[int]] = {}
    values: dict[str, list[Any]] = {}
    for row, attributes in enumerate(maps):
        for key, value in attributes.items():
            column = values.get(key)
            if column is None:
                column = values[key] = []
                positions[key] = []
            column.append(value)
            positions[key].append(row)
    total = len(maps)
    return {
        key: [None if len(column) == total else _packed("I", positions[key]), column]
        for key, column in values.items()
    }


def _dictionary(names: Sequence[str]) -> tuple[list[str], bytes]:
    index: dict[str, int] = {}
    codes = [index.setdefault(name, len(index)) for name in names]
    return list(index), _packed("I", codes)


def encode(records: Sequence[SpanRecord]) -> bytes:
    """The columnar layout of ``records`` (spans first, then log events, as :func:`.wire.encode`
    orders them). Attributes are written as they are (no privacy guard: a prototype for measuring)."""
    spans = [r for r in records if r.log is None] + [r for r in records if r.log is not None]
    resources: list[dict[str, Any]] = []
    resource_index: dict[int, int] = {}
    indices = []
    for span in spans:
        index = resource_index.get(id(span.resource))
        if index is None:
            index = resource_index[id(span.resource)] = len(resources)
            resources.append(span.resource)
        indices.append(index)
    events = [event for span in spans for event in span.events]
    span_names, span_codes = _dictionary([s.name for s in spans])
    event_names, event_codes = _dictionary([e.name for e in events])
    logs = [(i, s.log) for i, s in enumerate(spans) if s.log is not None]
    batch = {
        "n": len(spans),
        "m": len(events),
        "res": resources,
        "ri": _packed("I", indices),
        "tid": b"".join([s.trace_id for s in spans]),
        "sid": b"".join([s.span_id for s in spans]),
        "pid": b"".join([s.parent_span_id or _NO_PARENT for s in spans]),
        "hp": bytes([s.parent_span_id is not None for s in spans]),
        "names": span_names,
        "ni": span_codes,
        "k": _packed("B", [s.kind for s in spans]),
        "sc": _packed("B", [s.status_code for s in spans]),
        "st": _packed("q", [s.start_unix_nano for s in spans]),
        "en": _packed("q", [s.end_unix_nano for s in spans]),
        "sa": _columns([s.attributes for s in spans]),
        "ec": _packed("I", [len(s.events) for s in spans]),
        "enames": event_names,
        "eni": event_codes,
        "et": _packed("q", [e.time_unix_nano for e in events]),
        "ea": _columns([e.attributes for e in events]),
        "log": [
            _packed("I", [i for i, _ in logs]),
            [origin.trace_id for _, origin in logs],
            [origin.span_id for _, origin in logs],
        ],
    }
    return msgpack.packb(batch, use_bin_type=True)


def decode(blob: bytes) -> dict[str, Any]:
    """The batch map of ``blob`` (columns still packed), checked for the lengths readers rely on."""
    try:
        batch = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=False)
    except Exception as exc:  # msgpack raises a zoo of types for garbage input
        raise WireFormatError(f"undecodable batch: {type(exc).__name__}") from None
    if not isinstance(batch, dict):
        raise WireFormatError("a columnar batch is a map")
    try:
        n, m = int(batch["n"]), int(batch["m"])
        if len(batch["tid"]) != 16 * n or len(batch["sid"]) != 8 * n or len(batch["pid"]) != 8 * n:
            raise WireFormatError("bad trace or span id column length")
        if len(batch["hp"]) != n:
            raise WireFormatError("bad parent column length")
    except (KeyError, TypeError) as exc:
        raise WireFormatError(f"bad columnar layout: {type(exc).__name__}") from None
    batch["n"], batch["m"] = n, m
    return batch


def _rows(columns: Any, length: int) -> list[dict[str, Any]]:
    """Attribute maps back from their columns (the inverse of :func:`_columns`)."""
    maps: list[dict[str, Any]] = [{} for _ in range(length)]
    if not isinstance(columns, dict):
        raise WireFormatError("attribute columns are a map")
    for key, (positions, values) in columns.items():
        rows = range(length) if positions is None else _unpacked("I", positions, len(values))
        if len(rows) != len(values):
            raise WireFormatError("an attribute column has the wrong length")
        for row, value in zip(rows, values, strict=True):
            maps[row][key] = value
    return maps


def decode_records(blob: bytes) -> list[SpanRecord]:
    """The records of a columnar batch, as :func:`.wire.decode_batch` reads the same batch in rows
    (per span and per event in Python: compatibility and tests; the vectorized reader does not)."""
    batch = decode(blob)
    n, m = batch["n"], batch["m"]
    try:
        span_attrs, event_attrs = _rows(batch["sa"], n), _rows(batch["ea"], m)
        counts = _unpacked("I", batch["ec"], n)
        ename_codes, times = _unpacked("I", batch["eni"], m), _unpacked("q", batch["et"], m)
        enames = batch["enames"]
        events = [
            EventRecord(enames[code], time, attrs)
            for code, time, attrs in zip(ename_codes, times, event_attrs, strict=True)
        ]
        names, resources = batch["names"], batch["res"]
        name_codes, kinds = _unpacked("I", batch["ni"], n), _unpacked("B", batch["k"], n)
        statuses, resource_codes = _unpacked("B", batch["sc"], n), _unpacked("I", batch["ri"], n)
        starts, ends = _unpacked("q", batch["st"], n), _unpacked("q", batch["en"], n)
        tid, sid, pid, has_parent = batch["tid"], batch["sid"], batch["pid"], batch["hp"]
        log_positions, log_traces, log_spans = batch["log"]
        logs = {
            position: LogOrigin(trace, span)
            for position, trace, span in zip(
                _unpacked("I", log_positions, len(log_traces)), log_traces, log_spans, strict=True
            )
        }
        records = []
        first = 0
        for i in range(n):
            last = first + counts[i]
            records.append(
                SpanRecord(
                    tid[16 * i : 16 * i + 16],
                    sid[8 * i : 8 * i + 8],
                    pid[8 * i : 8 * i + 8] if has_parent[i] else None,
                    names[name_codes[i]],
                    kinds[i],
                    starts[i],
                    ends[i],
                    statuses[i],
                    span_attrs[i],
                    events[first:last],
                    resources[resource_codes[i]],
                    logs.get(i),
                )
            )
            first = last
        if first != m:
            raise WireFormatError("event counts do not add up to the events")
        return records
    except WireFormatError:
        raise
    except Exception as exc:
        raise WireFormatError(f"bad columnar layout: {type(exc).__name__}") from None
