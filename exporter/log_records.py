"""Which log records are StudyIn events, and how one becomes a wire record (issue 16).

The one rule for both writers of log events, the logs exporter (SDK log records) and the gateway
(OTLP logs): a log record is an event when its event name is ``studyin.<type>``; every other log
record (application logs, their bodies above all) is dropped before anything is encoded. An
event's body is never carried: the wire's log row has no body (a StudyIn event says everything in
its attributes), so no free text can leave through it.

Identity: the tracker's log carrier draws a random 128-bit id per event (``studyin.event.uid``,
32 hex digits), which becomes the row's ``event_uid``. A ``studyin.*`` record that arrives without
a valid one (another producer) gets a digest of its name, time, ids and attributes instead: the
same record exported twice (a collector's retry) is stored once; two identical events at the same
nanosecond are one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from ..instrumentation import semconv
from .wire import SpanRecord, log_record

__all__ = ["event_uid", "is_event_name", "log_event", "sdk_log_events"]

_UID_HEX_LENGTH = 32


def is_event_name(name: Any) -> bool:
    """True for ``studyin.<type>`` (the span events' rule: ``semconv.event_type_of``)."""
    return type(name) is str and bool(name) and semconv.event_type_of(name) is not None


def event_uid(
    value: Any,
    name: str,
    time_unix_nano: int,
    trace_id: bytes | None,
    span_id: bytes | None,
    attributes: dict[str, Any],
) -> bytes:
    """The 16 bytes of a ``studyin.event.uid`` value, else a digest of the record (module docstring)."""
    if type(value) is str and len(value) == _UID_HEX_LENGTH:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    elif type(value) is bytes and len(value) == 16:
        return value
    try:
        packed = msgpack.packb([name, time_unix_nano, trace_id, span_id, attributes], use_bin_type=True)
    except (TypeError, ValueError):  # a value msgpack cannot pack: its text then
        packed = repr((name, time_unix_nano, trace_id, span_id, sorted(attributes.items()))).encode()
    return hashlib.blake2b(packed, digest_size=16).digest()


def log_event(
    name: str,
    time_unix_nano: int,
    trace_id: bytes | None,
    span_id: bytes | None,
    attributes: dict[str, Any],
    resource: dict[str, Any],
) -> SpanRecord:
    """The wire record of one ``studyin.*`` log record; ``attributes`` lose the uid attribute."""
    uid_value = attributes.pop(semconv.EVENT_UID, None)
    uid = event_uid(uid_value, name, time_unix_nano, trace_id, span_id, attributes)
    return log_record(uid, trace_id, span_id, name, time_unix_nano, attributes, resource)


def _plain(attributes: Any) -> dict[str, Any]:
    # The dict behind the SDK's BoundedAttributes, copied (the uid is popped from the copy).
    return dict(getattr(attributes, "_dict", attributes) or {})


def sdk_log_events(batch: Any) -> list[SpanRecord]:
    """The StudyIn events of a batch of SDK ``ReadableLogRecord``\\ s as wire records; others dropped."""
    out: list[SpanRecord] = []
    resources: dict[int, dict[str, Any]] = {}
    for item in batch:
        record = item.log_record
        name = record.event_name
        if not is_event_name(name):
            continue
        resource = resources.get(id(item.resource))
        if resource is None:
            resource = resources[id(item.resource)] = _plain(item.resource.attributes)
        trace_id = record.trace_id.to_bytes(16, "big") if record.trace_id else None
        span_id = record.span_id.to_bytes(8, "big") if record.span_id else None
        time = record.timestamp or record.observed_timestamp or 0
        out.append(log_event(name, time, trace_id, span_id, _plain(record.attributes), resource))
    return out
