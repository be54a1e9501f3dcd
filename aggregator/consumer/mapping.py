"""From bus records to event rows (which spans are StudyIn events is ``exporter.events``' rule).

Each row gets a deterministic id derived from the trace id, span id and the event's
position in its span, so a batch delivered twice maps to the same ids; that is what makes
the aggregator's inserts idempotent.

Times are kept to the microsecond (:func:`micros_of`), which is what PostgreSQL stores: the raw
row and every rollup key (day, hour, minute) derive from the same integer, so an event a few
nanoseconds before midnight is counted on the day it is stored on. The rounding is the one of
``datetime.fromtimestamp(time_unix_nano / 1e9)`` that earlier versions stored with: the time is
part of the primary key, so a replay across an upgrade must map to the same key.

Before anything is stored, :func:`screen` sorts the rows of an entry: events inside the event
window are kept (as raw records), events older than raw retention are left out (expired), and
events no retry can mend are refused with a reason (later than the window, a value PostgreSQL
refuses): the aggregator dead-letters those events alone, not their entry.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from asyncpg.pgproto.pgproto import UUID as _FastUUID

from ...exporter.admission import EventWindow
from ...exporter.event_types import SERVER_SPAN_INDEX, micros_of, span_events, time_of
from ...exporter.wire import SpanRecord
from ...instrumentation import semconv
from ...instrumentation.privacy import is_pseudonym
from .custom_events import custom_row
from .sessions import RECORDED_START

__all__ = [
    "RAW_COLUMNS",
    "SERVER_SPAN_INDEX",
    "EventRow",
    "RawRecord",
    "Refusal",
    "Screened",
    "dumps_json",
    "event_id",
    "locate",
    "micros_of",
    "raw_records",
    "rows_from_span",
    "rows_of",
    "screen",
    "time_of",
]

_UNSET: Any = object()

LRS_ACTOR_FIELD = "lrs_actor"
"""Property holding the learner's LRS pseudonym (``user.lrs_hash`` on the wire; docs/xapi.md)."""
PREVIOUS_HASH_FIELD = "previous_user_hash"
"""Property holding the learner's pseudonym under the previous analytics key (``user.previous_hash``,
a key rotation's transition only): the link ``analysis_learners`` keeps (docs/analytics.md)."""
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


@functools.lru_cache(maxsize=65_536)
def _valid_pseudonym(value: str) -> bool:
    return is_pseudonym(value)


def _user(value: Any) -> str | None:
    # One regex match per distinct learner, not per event (bounded cache).
    return value if type(value) is str and _valid_pseudonym(value) else None


def _session(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return _FastUUID(str(value))  # type: ignore[no-any-return]
    except ValueError:
        return None


def rows_from_span(record: SpanRecord) -> list[EventRow]:
    """Event rows carried by one span (possibly none): :func:`~...exporter.event_types.span_events`
    with deterministic ids, fields by name, a validated pseudonym and the session as a UUID."""
    rows: list[EventRow] = []
    trace_id, span_id = record.trace_id, record.span_id
    span_session_text: Any = _UNSET
    span_session: uuid.UUID | None = None
    fields = semconv.ATTRIBUTE_FIELDS
    raw_user: Any = _UNSET
    user_hash: str | None = None
    for index, event_type, time_us, user, attributes in span_events(record):
        if user is not raw_user:  # events of a span mostly share the span's user: checked once
            raw_user, user_hash = user, _user(user)
        if index == SERVER_SPAN_INDEX:  # the span's own api_request: its fields already
            rows.append(
                EventRow(
                    event_id(trace_id, span_id, index),
                    time_of(time_us),
                    event_type,
                    user_hash,
                    None,
                    attributes,
                    time_us,
                )
            )
            continue
        if span_session_text is _UNSET:
            span_session_text = record.attributes.get(_SESSION_ID_ATTR)
            span_session = _session(span_session_text)
        if event_type == semconv.CUSTOM_EVENT_TYPE:  # named by its schema, its own properties only
            rows.append(
                _custom(record, index, time_us, user_hash, attributes, span_session_text, span_session)
            )
            continue
        properties: dict[str, Any] = {}
        for key, value in attributes.items():
            field = fields.get(key)
            if field is not None:
                properties[field] = value
        if event_type == "session_end" and record.name == semconv.LEARNING_SESSION_SPAN:
            # The session's own span started when the session did (the tracker's record of
            # it): its start bounds the study time like a session_start (aggregator/consumer/sessions.py).
            properties[RECORDED_START] = micros_of(record.start_unix_nano)
        lrs_actor = attributes.get(semconv.USER_LRS_HASH, record.attributes.get(semconv.USER_LRS_HASH))
        if lrs_actor is not None and type(lrs_actor) is str and _valid_pseudonym(lrs_actor):
            properties[LRS_ACTOR_FIELD] = lrs_actor
        previous = attributes.get(
            semconv.USER_PREVIOUS_HASH, record.attributes.get(semconv.USER_PREVIOUS_HASH)
        )
        if previous is not None and type(previous) is str and _valid_pseudonym(previous):
            properties[PREVIOUS_HASH_FIELD] = previous
        session_text = properties.get("session_id")
        if session_text is None or session_text == span_session_text:
            session_id = span_session
        else:
            session_id = _session(session_text) or span_session
        rows.append(
            EventRow(
                event_id(trace_id, span_id, index),
                time_of(time_us),
                event_type,
                user_hash,
                session_id,
                properties,
                time_us,
            )
        )
    return rows


def _custom(
    record: SpanRecord,
    index: int,
    time_us: int,
    user_hash: str | None,
    attributes: dict[str, Any],
    span_session_text: Any,
    span_session: uuid.UUID | None,
) -> EventRow:
    """The row of a custom event: what :func:`rows_from_span` makes of any event, with the type and
    properties of :func:`.custom_events.custom_row` (the built-in fields are not looked for: they
    would be replaced; the session is the one of the built-in ``session_id`` attribute, as for any event)."""
    session_text = attributes.get(_SESSION_ID_ATTR)
    if session_text is None or session_text == span_session_text:
        session_id = span_session
    else:
        session_id = _session(session_text) or span_session
    event_type, properties = custom_row(attributes)
    return EventRow(
        event_id(record.trace_id, record.span_id, index),
        time_of(time_us),
        event_type,
        user_hash,
        session_id,
        properties,
        time_us,
    )


class Refusal(NamedTuple):
    """An event that no retry can store, and why (names fields, never values)."""

    event_id: uuid.UUID
    event_type: str
    reason: str


class Screened(NamedTuple):
    """The rows of an entry, sorted by :func:`screen`."""

    rows: list[EventRow]
    records: list[RawRecord]
    """``rows`` as raw records (same order)."""
    refused: list[Refusal]
    expired: int


_NUL_ESCAPE = b"\\u0000"


def _nul_field(properties: dict[str, Any]) -> str | None:
    """The first field whose value holds a NUL character at any depth, else ``None``."""
    for field, value in properties.items():
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if "\x00" in item:
                    return field
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                stack.extend(item)
    return None


def screen(rows: Iterable[EventRow], window: EventWindow) -> Screened:
    """Keep the rows inside ``window`` that PostgreSQL can store; leave out the older ones; refuse
    the later ones and those with a value PostgreSQL refuses (a NUL character in JSON or text)."""
    kept: list[EventRow] = []
    records: list[RawRecord] = []
    refused: list[Refusal] = []
    expired = 0
    earliest, latest = window.earliest_us, window.latest_us
    dumps = orjson.dumps
    for row in rows:
        time_us = row.time_us
        if time_us < earliest:
            expired += 1
            continue
        if time_us > latest:
            refused.append(Refusal(row.event_id, row.event_type, window.too_late("the event time")))
            continue
        try:
            text = dumps(row.properties)
        except (orjson.JSONEncodeError, TypeError) as exc:  # nested deeper than orjson's limit
            reason = f"properties cannot be stored as JSON ({type(exc).__name__})"
            refused.append(Refusal(row.event_id, row.event_type, reason))
            continue
        if _NUL_ESCAPE in text or "\x00" in row.event_type:
            field = _nul_field(row.properties) if _NUL_ESCAPE in text else "event type"
            if field is not None:
                reason = f"{field!r} holds a NUL character, which PostgreSQL refuses"
                refused.append(Refusal(row.event_id, row.event_type, reason))
                continue
        kept.append(row)
        records.append(
            (row.event_id, row.occurred_at, row.event_type, row.user_hash, row.session_id, text.decode())
        )
    return Screened(kept, records, refused, expired)


def locate(spans: Iterable[SpanRecord], ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    """Where the events ``ids`` come from: (position of the span, index of the event in it, or
    :data:`SERVER_SPAN_INDEX` for the span's own ``api_request``)."""
    found: dict[uuid.UUID, tuple[int, int]] = {}
    for position, span in enumerate(spans):
        for index in (*range(len(span.events)), SERVER_SPAN_INDEX):
            key = event_id(span.trace_id, span.span_id, index)
            if key in ids:
                found[key] = (position, index)
    return found
