"""From bus records to event rows (which spans are StudyIn events is ``exporter.events``' rule).

Each row gets a deterministic id derived from the trace id, span id and the event's
position in its span, so a batch delivered twice maps to the same ids; that is what makes
the aggregator's inserts idempotent.

Times are kept to the microsecond (:func:`micros_of`), which is what PostgreSQL stores: the raw
row and every rollup key (day, hour, minute) derive from the same integer, so an event a few
nanoseconds before midnight is counted on the day it is stored on. The rounding is the one of
``datetime.fromtimestamp(time_unix_nano / 1e9)`` that earlier versions stored with: the time is
part of the primary key, so a replay across an upgrade must map to the same key.
"""

from __future__ import annotations

import functools
import hashlib
import math
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from asyncpg.pgproto.pgproto import UUID as _FastUUID

from ..exporter.events import API_REQUEST, api_request_fields, domain_event_type
from ..exporter.wire import SPAN_KIND_SERVER, SpanRecord
from ..instrumentation import semconv
from ..instrumentation.privacy import is_pseudonym
from .sessions import RECORDED_START

_SERVER_SPAN_INDEX = 0xFFFF  # position used for the span itself, after any event index
_INDEX_BYTES = tuple(i.to_bytes(4, "big") for i in range(256))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SESSION_ID_ATTR = semconv.FIELD_ATTRIBUTES["session_id"]


class EventRow(NamedTuple):
    event_id: uuid.UUID
    occurred_at: datetime
    event_type: str
    user_hash: str | None
    session_id: uuid.UUID | None
    properties: dict[str, Any]
    time_us: int
    """``occurred_at`` as integer microseconds since the epoch (rollup keys derive from it)."""


RawRecord = tuple[uuid.UUID, datetime, str, str | None, uuid.UUID | None, str]
"""An event as it is copied into ``analytics_events``: :data:`RAW_COLUMNS`, properties as JSON text."""

RAW_COLUMNS = ("event_id", "occurred_at", "event_type", "user_hash", "session_id", "properties")


def dumps_json(value: Any) -> str:
    """Compact JSON text for JSONB parameters (orjson: ~5x the standard library's speed)."""
    return orjson.dumps(value).decode()


loads_json: Callable[[str], Any] = orjson.loads


def event_id(trace_id: bytes, span_id: bytes, index: int) -> uuid.UUID:
    """Deterministic id of the ``index``-th event of a span."""
    position = _INDEX_BYTES[index] if index < 256 else index.to_bytes(4, "big")
    digest = hashlib.blake2b(trace_id + span_id + position, digest_size=16).digest()
    # asyncpg's C UUID: a uuid.UUID subclass (equal, same hash), ~10x cheaper to build.
    return _FastUUID(digest)  # type: ignore[no-any-return]


def raw_records(rows: Iterable[EventRow]) -> list[RawRecord]:
    """``rows`` as the aggregator copies them into ``analytics_events`` (properties as JSON text)."""
    dumps = orjson.dumps
    return [
        (r.event_id, r.occurred_at, r.event_type, r.user_hash, r.session_id, dumps(r.properties).decode())
        for r in rows
    ]


def rows_of(records: Iterable[RawRecord]) -> list[EventRow]:
    """Event rows back from raw records (the inverse of :func:`raw_records`; parses the JSON again)."""
    return [
        EventRow(r[0], r[1], r[2], r[3], r[4], loads_json(r[5]), (r[1] - _EPOCH) // _MICROSECOND)
        for r in records
    ]


_fromtimestamp = datetime.fromtimestamp  # positional tz: keyword parsing costs ~40 % of the call
_modf = math.modf


def micros_of(unix_nano: int) -> int:
    """Microseconds since the epoch of ``unix_nano``, rounded as ``datetime.fromtimestamp(unix_nano / 1e9)``
    rounds (CPython: fractional part of the float seconds, times 1e6, half to even)."""
    fraction, whole = _modf(unix_nano / 1e9)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    return int(whole) * 1_000_000 + micros


def time_of(time_us: int) -> datetime:
    """The UTC datetime of integer microseconds (exact: the float is within 0.25 µs)."""
    return _fromtimestamp(time_us / 1e6, UTC)


@functools.lru_cache(maxsize=65_536)
def _valid_pseudonym(value: str) -> bool:
    return is_pseudonym(value)


def _user(attributes: dict[str, Any], fallback: str | None) -> str | None:
    value = attributes.get(semconv.USER_HASH, fallback)
    # One regex match per distinct learner, not per span (bounded cache).
    return value if type(value) is str and _valid_pseudonym(value) else None


def _session(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return _FastUUID(str(value))  # type: ignore[no-any-return]
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _event_type(name: str) -> str | None:
    return domain_event_type(name)


def rows_from_span(record: SpanRecord) -> list[EventRow]:
    """Event rows carried by one span (possibly none)."""
    rows: list[EventRow] = []
    span_attributes = record.attributes
    span_user = _user(span_attributes, None)
    trace_id, span_id = record.trace_id, record.span_id
    if record.events:
        span_session_text = span_attributes.get(_SESSION_ID_ATTR)
        span_session = _session(span_session_text)
        fields = semconv.ATTRIBUTE_FIELDS
        for index, event in enumerate(record.events):
            event_type = _event_type(event.name)
            if event_type is None:
                continue
            attributes = event.attributes
            properties: dict[str, Any] = {}
            for key, value in attributes.items():
                field = fields.get(key)
                if field is not None:
                    properties[field] = value
            if event_type == "session_end" and record.name == semconv.LEARNING_SESSION_SPAN:
                # The session's own span started when the session did (the tracker's record of
                # it): its start bounds the study time like a session_start (aggregator/sessions.py).
                properties[RECORDED_START] = micros_of(record.start_unix_nano)
            session_text = properties.get("session_id")
            if session_text is None or session_text == span_session_text:
                session_id = span_session
            else:
                session_id = _session(session_text) or span_session
            user = _user(attributes, span_user) if semconv.USER_HASH in attributes else span_user
            time_us = micros_of(event.time_unix_nano)
            rows.append(
                EventRow(
                    event_id(trace_id, span_id, index),
                    time_of(time_us),
                    event_type,
                    user,
                    session_id,
                    properties,
                    time_us,
                )
            )
    if record.kind == SPAN_KIND_SERVER:
        request = api_request_fields(record)
        if request is not None:
            time_us = micros_of(record.end_unix_nano)
            rows.append(
                EventRow(
                    event_id(trace_id, span_id, _SERVER_SPAN_INDEX),
                    time_of(time_us),
                    API_REQUEST,
                    span_user,
                    None,
                    request,
                    time_us,
                )
            )
    return rows
