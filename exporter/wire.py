"""The bus wire format: how a batch of spans and log-record events is laid out in one Redis stream entry.

Shared by the Redis exporter (writes), the OTLP gateway (writes) and the aggregator and bus
readers (read); nothing else knows the layout.

Version 1, chosen on measurements (see docs/architecture.md): one stream entry per export
batch, fields

* ``v``: format version (``b"1"``),
* ``n``: number of spans (so stats need not decode),
* ``d``: msgpack of ``[resources, spans]``; ``resources`` is a list of attribute maps and
  each span is ``[trace_id(16 B), span_id(8 B), parent_span_id(8 B)|nil, name, kind,
  start_unix_nano, end_unix_nano, status_code, attributes, events, resource_index]`` with
  ``events`` a list of ``[name, time_unix_nano, attributes]``.

Why msgpack of the whole batch: on the reference machine msgpack costs ~6 µs per
attribute-rich span against ~37 µs for OTLP protobuf; measured in one run here
(``python -m studyin_analytics.benchmarks.exporter``), guard + msgpack take 0.18–0.29 of
OTLP's encode time, and the whole export call 5× less CPU than the stock OTLP/HTTP
exporter. One ~200 KB entry per batch keeps Redis at one round trip per batch. Figures and
method: docs/bus.md.

Version 2 (issue 16, the log-record carrier; shared with the per-batch work): the same
fields with ``v = b"2"``; ``n`` counts spans + log events; ``d`` is msgpack of ``[resources,
spans, logs]``, resources and span rows exactly as in version 1, each log row ``[event_uid
(16 random bytes, assigned when the event was emitted), trace_id (16 B)|nil, span_id (8 B)|nil,
event_name, time_unix_nano, attributes, resource_index]``. Writers always write version 2
(a span-only batch carries an empty ``logs`` list: one byte more, one layout to write and
test); readers accept 1 and 2.

Readers see a log row as a :class:`SpanRecord` of its own (:func:`log_record`): one event
named ``event_name``, trace id ``event_uid``, span id :data:`LOG_SPAN_ID`, and ``log`` holding
the correlation ids. Everything that maps span events to rows (the aggregator's deterministic
event ids, bus reads, erasure, the LRS forwarder) thus reads log events unchanged, and
:func:`encode` writes such a record back as a log row (a rewrite keeps the layout).

A reader that meets another ``v`` raises :class:`WireFormatError` (the aggregator
dead-letters the entry); a new layout gets a new version, and readers learn it first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgpack
from opentelemetry.sdk.trace import ReadableSpan

from ..instrumentation.privacy import PrivacyGuard

_MISSING: Any = object()

WIRE_VERSION = b"2"
WIRE_VERSION_1 = b"1"
READABLE_VERSIONS = (WIRE_VERSION_1, WIRE_VERSION)
FIELD_VERSION = b"v"
FIELD_COUNT = b"n"
FIELD_DATA = b"d"

SPAN_KIND_INTERNAL = 0
SPAN_KIND_SERVER = 1
SPAN_KIND_CLIENT = 2
SPAN_KIND_PRODUCER = 3
SPAN_KIND_CONSUMER = 4

STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2


class WireFormatError(ValueError):
    """A stream entry that is not a valid batch of this format (a poison entry)."""


class EventRecord(NamedTuple):
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


class LogOrigin(NamedTuple):
    """Where a log-record event was emitted: the span current then (ids), if any."""

    trace_id: bytes | None
    span_id: bytes | None


LOG_SPAN_ID = b"\x00studlog"
"""The span id of the record a log event is read as (no real span has it: ids are random)."""
LOG_RECORD_NAME = "studyin.log_record"
"""The name of the record a log event is read as (never written on the wire)."""


class SpanRecord(NamedTuple):
    """One span as it travels on the bus (already through the privacy guard), or one log-record
    event read as a span with that one event (``log`` set; :func:`log_record`)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: int
    start_unix_nano: int
    end_unix_nano: int
    status_code: int
    attributes: dict[str, Any]
    events: list[EventRecord]
    resource: dict[str, Any]
    log: LogOrigin | None = None


def log_record(
    event_uid: bytes,
    trace_id: bytes | None,
    span_id: bytes | None,
    event_name: str,
    time_unix_nano: int,
    attributes: dict[str, Any],
    resource: dict[str, Any],
) -> SpanRecord:
    """A log-record event as readers see it: ``event_uid`` as the trace id, so the aggregator's
    event id (trace id, span id, index 0) is fixed when the event is emitted and survives
    redelivery and re-export."""
    return SpanRecord(
        event_uid,
        LOG_SPAN_ID,
        None,
        LOG_RECORD_NAME,
        SPAN_KIND_INTERNAL,
        time_unix_nano,
        time_unix_nano,
        STATUS_UNSET,
        {},
        [EventRecord(event_name, time_unix_nano, attributes)],
        resource,
        LogOrigin(trace_id, span_id),
    )


def _packable(attributes: Mapping[str, Any]) -> dict[str, Any]:
    # Unguarded (tests and tools only): attribute values are anything OTLP's AnyValue holds
    # (scalars, bytes, tuples or lists, nested dicts), which msgpack packs as they are.
    return dict(attributes)


def _plain(attributes: Any) -> Any:
    """The dict behind the SDK's ``BoundedAttributes`` (its ``items()`` locks, copies and
    looks every key up in Python); any other mapping as it is."""
    return getattr(attributes, "_dict", attributes)


def _span_attributes(span: Any) -> Any:
    # ``ReadableSpan.attributes`` wraps the span's BoundedAttributes in a MappingProxyType on
    # every access; the SDK span keeps them in ``_attributes`` (read-only once ended).
    raw = getattr(span, "_attributes", _MISSING)
    if raw is _MISSING:
        return span.attributes
    return _plain(raw) if raw is not None else None


def _span_events(span: Any) -> Any:
    # ``ReadableSpan.events`` copies the SDK's BoundedList into a tuple under its lock; the
    # deque behind it is final once the span has ended.
    raw = getattr(span, "_events", _MISSING)
    if raw is _MISSING:
        return span.events
    return getattr(raw, "_dq", raw) or ()


def _same(name: str) -> str:
    return name


def _log_row(record: SpanRecord, index: int, clean: Any, clean_name: Any) -> list[Any]:
    event = record.events[0]
    origin: Any = record.log
    return [
        record.trace_id,
        origin.trace_id,
        origin.span_id,
        clean_name(event.name),
        event.time_unix_nano,
        clean(event.attributes),
        index,
    ]


def encode(spans: Iterable[Any], guard: PrivacyGuard | None = None) -> bytes:
    """The one encoder of the layout: a batch of spans -> the ``d`` field of an entry.

    ``spans`` are SDK ``ReadableSpan`` objects (the exporter) or :class:`SpanRecord` objects (the
    gateway, the logs exporter, tools and tests; those with ``log`` set become log rows).
    ``guard`` is applied to every attribute map (nested kvlists, arrays and bytes included: the
    SDK accepts any ``AnyValue`` as a span attribute) and to span and event names; without one
    (tests and tools only) attributes are packed as they are.
    """
    resources: list[dict[str, Any]] = []
    resource_index: dict[int, int] = {}
    rows: list[list[Any]] = []
    logs: list[list[Any]] = []
    append = rows.append
    clean: Any = guard.clean if guard is not None else _packable
    clean_name: Any = guard.clean_name if guard is not None else _same
    for span in spans:
        if type(span) is SpanRecord:
            resource: Any = span.resource
            if span.log is not None:  # a log-record event: a log row (layout in the module docstring)
                index = resource_index.get(id(resource))
                if index is None:
                    index = resource_index[id(resource)] = len(resources)
                    resources.append(clean(resource))
                logs.append(_log_row(span, index, clean, clean_name))
                continue
            resource_attributes: Any = resource
            name = span.name
            trace_id, span_id, parent_id = span.trace_id, span.span_id, span.parent_span_id
            kind, start, end, status = span.kind, span.start_unix_nano, span.end_unix_nano, span.status_code
            attributes: Any = span.attributes
            events = [[clean_name(e.name), e.time_unix_nano, clean(e.attributes)] for e in span.events]
        else:  # an SDK ReadableSpan
            if type(span) is ReadableSpan:  # what the SDK hands exporters: its fields read directly
                sdk: Any = span
                resource, context, parent, name = sdk._resource, sdk._context, sdk._parent, sdk._name
                # ``_value_``: an enum member's value, without the descriptor behind ``.value``
                kind, start, end = sdk._kind._value_, sdk._start_time, sdk._end_time
                status = sdk._status.status_code._value_
                raw = sdk._attributes
                attributes = _plain(raw) if raw is not None else None
            else:  # a subclass, or an SDK Span
                resource, context, parent, name = span.resource, span.context, span.parent, span.name
                kind, start, end = span.kind.value, span.start_time, span.end_time
                status = span.status.status_code.value
                attributes = _span_attributes(span)
            resource_attributes = None  # read below, once per resource
            trace_id, span_id = context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big")
            parent_id = parent.span_id.to_bytes(8, "big") if parent is not None else None
            sdk_events = _span_events(span)
            events = (
                [[clean_name(e.name), e.timestamp, clean(_plain(e.attributes))] for e in sdk_events]
                if sdk_events
                else []
            )
        index = resource_index.get(id(resource))
        if index is None:
            index = resource_index[id(resource)] = len(resources)
            resources.append(clean(_plain(resource.attributes) if resource_attributes is None else resource))
        # The span layout of the module docstring (decode_batch reads it back).
        append(
            [
                trace_id,
                span_id,
                parent_id,
                clean_name(name),
                kind,
                start,
                end,
                status,
                clean(attributes),
                events,
                index,
            ]
        )
    return msgpack.packb([resources, rows, logs], use_bin_type=True)


encode_readable_spans = encode
"""The exporter's name for :func:`encode` (SDK spans)."""
encode_records = encode
"""The gateway's name for :func:`encode` (:class:`SpanRecord` objects)."""


def entry_fields(blob: bytes, count: int) -> dict[Any, Any]:
    """The stream entry fields for one encoded batch. The version follows the blob's layout (a
    msgpack array of 2 or 3): a version-1 blob spooled before an upgrade is still written as one."""
    version = WIRE_VERSION_1 if blob[:1] == _ARRAY_OF_2 else WIRE_VERSION
    return {FIELD_VERSION: version, FIELD_COUNT: str(count).encode(), FIELD_DATA: blob}


_ARRAY_OF_2 = b"\x92"  # msgpack fixarray header of length 2


def decode_entry(fields: Mapping[bytes, bytes]) -> list[SpanRecord]:
    """Decode one stream entry (version 1 or 2); raises :class:`WireFormatError` for anything malformed."""
    version = fields.get(FIELD_VERSION)
    if version not in READABLE_VERSIONS:
        raise WireFormatError(f"unsupported wire version {version!r}")
    blob = fields.get(FIELD_DATA)
    if blob is None:
        raise WireFormatError("entry has no data field")
    return decode_batch(blob, version)


def _log_records(rows: Any, resources: Any) -> list[SpanRecord]:
    records = []
    for event_uid, trace_id, span_id, name, time, attrs, index in rows:
        if len(event_uid) != 16 or (trace_id is not None and len(trace_id) != 16):
            raise WireFormatError("bad event uid or trace id length")
        if (span_id is not None and len(span_id) != 8) or not isinstance(attrs, dict):
            raise WireFormatError("bad log layout")
        if not isinstance(name, str) or not isinstance(event_uid, bytes):
            raise WireFormatError("bad log layout")
        records.append(log_record(event_uid, trace_id, span_id, name, int(time), attrs, resources[index]))
    return records


_LAYOUT_LENGTH: dict[bytes, int] = {WIRE_VERSION_1: 2, WIRE_VERSION: 3}


def decode_batch(blob: bytes, version: bytes | None = None) -> list[SpanRecord]:
    """The records of one ``d`` field of ``version`` (without one: the version its layout has):
    spans first, then log events (as records)."""
    try:
        # Tuples, not lists: ~35 % cheaper to build (sequence attribute values arrive as tuples,
        # as the SDK hands them over).
        batch = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=False)
        if version is not None and len(batch) != _LAYOUT_LENGTH[version]:
            raise WireFormatError("layout does not match the wire version")
        if len(batch) == 2:  # version 1
            resources, rows = batch
            logs: Any = ()
        else:
            resources, rows, logs = batch
        records = []
        for row in rows:
            (trace_id, span_id, parent, name, kind, start, end, status, attrs, events, index) = row
            if len(trace_id) != 16 or len(span_id) != 8:
                raise WireFormatError("bad trace or span id length")
            if not isinstance(attrs, dict) or not isinstance(name, str):
                raise WireFormatError("bad span layout")
            records.append(
                SpanRecord(
                    trace_id,
                    span_id,
                    parent,
                    name,
                    int(kind),
                    int(start),
                    int(end),
                    int(status),
                    attrs,
                    [EventRecord(en, int(et), ea) for en, et, ea in events],
                    resources[index],
                )
            )
        if logs:
            records.extend(_log_records(logs, resources))
        return records
    except WireFormatError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types for garbage input
        raise WireFormatError(f"undecodable batch: {type(exc).__name__}") from None
