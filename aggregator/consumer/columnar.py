"""A columnar batch (``exporter/wire_columnar.py``) as arrays, and its StudyIn events as one Arrow table.

A prototype measured for issue 25 (docs/aggregator.md, "A columnar batch, measured"): **not on the
aggregator's path**. It gives the same events as :func:`.mapping.rows_from_span` over the same spans
(ids, types, times, validated users) and the fields the main rollups read, with a fixed number of
array operations per batch: Python runs per distinct value (event names, schema names, the rare
pseudonym ending in a newline), never per event, except for the event ids (:mod:`.columnar_ids`).

What the row rules allow and the vectorized ones do not cover (an attribute column mixing types, a
route that is not a string, a number sent as a string...) raises :class:`Unvectorizable`: such a
batch would go the row way, whose result is the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ...exporter import wire_columnar
from ...exporter.event_types import API_REQUEST, SERVER_SPAN_INDEX
from ...exporter.wire import SPAN_KIND_SERVER, STATUS_ERROR, WireFormatError
from ...instrumentation import semconv
from ...instrumentation.custom_schemas import NAME_PATTERN
from ...instrumentation.privacy import PSEUDONYM_PATTERN, is_pseudonym
from .columnar_ids import hash_inputs, ids_mapped

__all__ = ["Columns", "Unvectorizable", "events", "load", "micros", "properties_json", "trunc_int"]

EVENT_FIELDS = {
    "xp": (semconv.FIELD_ATTRIBUTES["xp_amount"], 0),
    "level": (semconv.FIELD_ATTRIBUTES["level"], 1),
    "streak_days": (semconv.FIELD_ATTRIBUTES["streak_days"], 0),
    "previous_days": (semconv.FIELD_ATTRIBUTES["previous_streak_days"], 0),
}
"""Integer event fields the main rollups read: column -> (attribute, default when absent)."""
ACHIEVEMENT = semconv.FIELD_ATTRIBUTES["achievement_id"]


class Unvectorizable(ValueError):
    """A value the vectorized rules do not cover (the row way handles the batch)."""


@dataclass(slots=True)
class Columns:
    """One columnar batch as arrays (span-level of length ``n``, event-level of length ``m``)."""

    n: int
    m: int
    trace_ids: np.ndarray
    span_ids: np.ndarray
    kinds: np.ndarray
    statuses: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    event_span: np.ndarray
    """The span (position) of each event."""
    event_index: np.ndarray
    """The position of each event in its span."""
    event_codes: np.ndarray
    event_names: tuple[str, ...]
    event_times: np.ndarray
    span_attributes: dict[str, Any]
    event_attributes: dict[str, Any]


def _array(data: Any, dtype: str, length: int) -> np.ndarray:
    if not isinstance(data, bytes):
        raise WireFormatError("a fixed-width column is not bytes")
    array = np.frombuffer(data, dtype=dtype)
    if len(array) != length:
        raise WireFormatError("a fixed-width column has the wrong length")
    return array


def load(blob: bytes) -> Columns:
    """The arrays of a columnar batch (one msgpack call, then views of its byte columns)."""
    batch = wire_columnar.decode(blob)
    n, m = batch["n"], batch["m"]
    counts = _array(batch["ec"], "<u4", n).astype(np.int64)
    if int(counts.sum()) != m:
        raise WireFormatError("event counts do not add up to the events")
    event_span = np.repeat(np.arange(n, dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    return Columns(
        n,
        m,
        _array(batch["tid"], "u1", 16 * n).reshape(n, 16),
        _array(batch["sid"], "u1", 8 * n).reshape(n, 8),
        _array(batch["k"], "u1", n),
        _array(batch["sc"], "u1", n),
        _array(batch["st"], "<i8", n),
        _array(batch["en"], "<i8", n),
        event_span,
        np.arange(m, dtype=np.int64) - offsets[event_span],
        _array(batch["eni"], "<u4", m),
        tuple(batch["enames"]),
        _array(batch["et"], "<i8", m),
        batch["sa"],
        batch["ea"],
    )


_KINDS: dict[str, tuple[frozenset[type], pa.DataType]] = {
    "str": (frozenset({str, type(None)}), pa.string()),
    "int": (frozenset({int, type(None)}), pa.int64()),
    "number": (frozenset({int, float, type(None)}), pa.float64()),
}


def attribute(columns: dict[str, Any], key: str, length: int, kind: str) -> tuple[pa.Array, np.ndarray]:
    """Column ``key`` of a batch's attribute columns (null where absent) and where the key is present.

    ``kind``: ``str`` (a string column), ``int`` (int64) or ``number`` (int64, or float64 when a value
    is a float). Any other value type (a bool among ints, which PyArrow would read as 1, a string
    among numbers...) raises :class:`Unvectorizable`: one C-level ``type()`` per value checks it.
    """
    allowed, arrow_type = _KINDS[kind]
    if kind == "number":
        arrow_type = pa.int64()
    column = columns.get(key)
    if column is None:
        return pa.nulls(length, arrow_type), np.zeros(length, dtype=bool)
    positions, values = column
    types = set(map(type, values))
    if not types <= allowed:
        raise Unvectorizable(f"attribute {key!r} holds {sorted(t.__name__ for t in types - allowed)}")
    if kind == "number" and float in types:
        arrow_type = pa.float64()
    try:
        array = pa.array(values, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        raise Unvectorizable(f"attribute {key!r} beyond {arrow_type}") from None
    if positions is None:
        return array, np.ones(length, dtype=bool)
    rows = np.frombuffer(positions, dtype="<u4")
    take = np.full(length, len(values), dtype=np.int64)
    take[rows] = np.arange(len(values), dtype=np.int64)
    present = np.zeros(length, dtype=bool)
    present[rows] = True
    return pa.concat_arrays([array, pa.nulls(1, array.type)]).take(take), present


def micros(unix_nano: np.ndarray) -> np.ndarray:
    """:func:`~...exporter.event_types.micros_of` over an int64 array (the same float operations)."""
    fraction, whole = np.modf(unix_nano / 1e9)
    out = np.rint(fraction * 1e6)
    carry = out >= 1_000_000
    out[carry] -= 1_000_000
    whole[carry] += 1.0
    borrow = out < 0
    out[borrow] += 1_000_000
    whole[borrow] -= 1.0
    return whole.astype(np.int64) * 1_000_000 + out.astype(np.int64)


def trunc_int(array: pa.Array, default: int, what: str) -> np.ndarray:
    """``counting._int`` over a column: ints as they are, finite floats truncated, else ``default``."""
    if array.type == pa.null():
        return np.full(len(array), default, dtype=np.int64)
    if array.type == pa.int64():
        return array.fill_null(default).to_numpy()  # type: ignore[no-any-return]
    if array.type == pa.float64():
        values = array.fill_null(math.nan).to_numpy(zero_copy_only=False)
        finite = np.isfinite(values)
        if np.any(np.abs(values[finite]) >= 2.0**53):  # ints mixed with floats arrive as doubles
            raise Unvectorizable(f"{what} beyond the integers a double holds exactly")
        return np.where(finite, np.trunc(np.where(finite, values, 0.0)), default).astype(np.int64)
    raise Unvectorizable(f"{what} is {array.type}")


def _validated(users: pa.Array) -> pa.Array:
    """``users`` where they are pseudonyms (:func:`...instrumentation.privacy.is_pseudonym`), else null.
    RE2 reads the pattern as Python does except ``$`` before a final newline: those few in Python."""
    valid = pc.fill_null(pc.match_substring_regex(users, PSEUDONYM_PATTERN.pattern), False)
    newline = pc.fill_null(pc.ends_with(users, "\n"), False)
    if pc.any(newline).as_py():
        special = [u for u in pc.unique(pc.filter(users, newline)).to_pylist() if is_pseudonym(u)]
        valid = pc.or_(valid, pc.fill_null(pc.is_in(users, value_set=pa.array(special, pa.string())), False))
    return pc.if_else(valid, users, pa.scalar(None, pa.string()))


def _custom_types(types: pa.Array, columns: Columns, keep: np.ndarray) -> pa.Array:
    """Custom events named by their schema when it is vendor-qualified (:func:`.custom_events.custom_row`)."""
    is_custom = pc.equal(types, semconv.CUSTOM_EVENT_TYPE)
    if not pc.any(is_custom).as_py():
        return types
    schema = attribute(columns.event_attributes, semconv.CUSTOM_SCHEMA, columns.m, "str")[0]
    schema = schema.filter(pa.array(keep))
    qualified = [s for s in pc.unique(schema).to_pylist() if s is not None and NAME_PATTERN.match(s)]
    named = pc.and_(
        is_custom, pc.fill_null(pc.is_in(schema, value_set=pa.array(qualified, pa.string())), False)
    )
    return pc.if_else(named, schema, types)


def _domain(columns: Columns, span_users: pa.Array) -> dict[str, Any]:
    """The span events that are StudyIn events, as columns (``user`` raw, ``time_us``...)."""
    kinds = [semconv.event_type_of(name) for name in columns.event_names]  # per distinct name
    if API_REQUEST in kinds:  # a span event posing as a request: the row way counts its properties
        raise Unvectorizable("a span event named as an api_request")
    is_domain = np.array([kind is not None for kind in kinds], dtype=bool)
    keep = is_domain[columns.event_codes] if columns.m else np.zeros(0, dtype=bool)
    codes = columns.event_codes[keep]
    types = pa.array(kinds, pa.string()).take(pa.array(codes))
    own, present = attribute(columns.event_attributes, semconv.USER_HASH, columns.m, "str")
    spans = columns.event_span[keep]
    users = pc.if_else(pa.array(present[keep]), own.filter(pa.array(keep)), span_users.take(pa.array(spans)))
    out: dict[str, Any] = {
        "span": spans,
        "index": columns.event_index[keep],
        "event_type": _custom_types(types, columns, keep),
        "time_us": micros(columns.event_times[keep]),
        "user": users,
    }
    for name, (key, default) in EVENT_FIELDS.items():
        values = attribute(columns.event_attributes, key, columns.m, "number")[0]
        out[name] = trunc_int(values.filter(pa.array(keep)), default, key)
    achievement = attribute(columns.event_attributes, ACHIEVEMENT, columns.m, "str")[0]
    out["achievement"] = achievement.filter(pa.array(keep))
    return out


def _span_string(columns: Columns, key: str) -> pa.Array:
    return attribute(columns.span_attributes, key, columns.n, "str")[0]


def _requests(columns: Columns, span_users: pa.Array) -> dict[str, Any]:
    """The ``api_request`` of each HTTP server span (:func:`...exporter.event_types.api_request_fields`)."""
    route = _span_string(columns, semconv.HTTP_ROUTE)
    method = pc.coalesce(_span_string(columns, "http.request.method"), _span_string(columns, "http.method"))
    server = pa.array(columns.kinds == SPAN_KIND_SERVER)
    is_api = pc.and_(server, pc.or_(pc.is_valid(method), pc.is_valid(route))).to_numpy(zero_copy_only=False)
    spans = np.flatnonzero(is_api)
    if len(spans) and (columns.starts[spans].min() < -(2**62) or columns.ends[spans].max() > 2**62):
        raise Unvectorizable("span times whose difference may overflow int64")
    take = pa.array(spans)
    route, method = route.take(take), method.take(take)
    method = pc.if_else(pc.fill_null(pc.equal(method, ""), True), "_OTHER", method)
    route = pc.if_else(pc.fill_null(pc.equal(route, ""), True), semconv.UNMATCHED_ROUTE, route)
    status = pc.coalesce(
        attribute(columns.span_attributes, "http.response.status_code", columns.n, "int")[0],
        attribute(columns.span_attributes, "http.status_code", columns.n, "int")[0],
    ).take(take)
    status_codes = status.fill_null(0).to_numpy()
    error = _span_string(columns, "error.type").take(take)
    failed = columns.statuses[spans] == STATUS_ERROR
    derived = np.where(failed, "_OTHER", np.where(status_codes >= 500, status_codes.astype(str), ""))
    fallback = pa.array(derived, pa.string())
    fallback = pc.if_else(pc.equal(fallback, ""), pa.scalar(None, pa.string()), fallback)
    ends, starts = columns.ends[spans], columns.starts[spans]
    return {
        "span": spans.astype(np.int64),
        "index": np.full(len(spans), SERVER_SPAN_INDEX, dtype=np.int64),
        "event_type": pa.array(np.full(len(spans), API_REQUEST), pa.string()),
        "time_us": micros(ends),
        "user": span_users.take(take),
        "route": route,
        "method": method,
        "status_code": status_codes,
        "error_type": pc.coalesce(error, fallback),
        "duration_ms": np.maximum(ends - starts, 0) / 1e6,
    }


IdFunction = Callable[[np.ndarray], bytes]


def events(columns: Columns, ids: IdFunction = ids_mapped) -> pa.Table:
    """The StudyIn events of a batch: span events first (in order), then the ``api_request`` of each
    HTTP server span; columns ``event_id`` (16 bytes), ``event_type``, ``time_us``, ``user`` (validated
    pseudonym or null), ``span``, ``index`` and the fields the main rollups read (null or default
    where the event has none)."""
    span_users = attribute(columns.span_attributes, semconv.USER_HASH, columns.n, "str")[0]
    domain, requests = _domain(columns, span_users), _requests(columns, span_users)
    parts = []
    for part in (domain, requests):
        count = len(part["span"])
        part["user"] = _validated(part["user"])
        keys = hash_inputs(columns.trace_ids[part["span"]], columns.span_ids[part["span"]], part["index"])
        part["event_id"] = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(16), count, [None, pa.py_buffer(ids(keys) if count else b"")]
        )
        parts.append(part)
    schema = pa.schema(
        [
            ("event_id", pa.binary(16)),
            ("event_type", pa.string()),
            ("time_us", pa.int64()),
            ("user", pa.string()),
            ("span", pa.int64()),
            ("index", pa.int64()),
            ("xp", pa.int64()),
            ("level", pa.int64()),
            ("streak_days", pa.int64()),
            ("previous_days", pa.int64()),
            ("achievement", pa.string()),
            ("route", pa.string()),
            ("method", pa.string()),
            ("status_code", pa.int64()),
            ("error_type", pa.string()),
            ("duration_ms", pa.float64()),
        ]
    )
    tables = []
    for part in parts:
        count = len(part["span"])
        tables.append(
            pa.table({f.name: part.get(f.name, pa.nulls(count, f.type)) for f in schema}, schema=schema)
        )
    return pa.concat_tables(tables)


def properties_json(columns: Columns) -> list[bytes]:
    """The JSON of each span event's fields by name (``studyin.*`` attributes renamed as
    :func:`.mapping.rows_from_span` renames them; without its additions: recorded start, LRS actor,
    previous pseudonym, custom properties). What a raw ``COPY`` from the columns still needs per
    event, in Python: it is measured (``bench --only aggregator_columnar``) to cost that step."""
    maps: list[dict[str, Any]] = [{} for _ in range(columns.m)]
    fields = semconv.ATTRIBUTE_FIELDS
    for key, (positions, values) in columns.event_attributes.items():
        field = fields.get(key)
        if field is None:
            continue
        rows = range(columns.m) if positions is None else np.frombuffer(positions, dtype="<u4").tolist()
        for row, value in zip(rows, values, strict=True):
            maps[row][field] = value
    dumps = orjson.dumps
    return [dumps(properties) for properties in maps]
