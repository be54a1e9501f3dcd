"""From bus records to event rows (which spans are StudyIn events is ``exporter.events``' rule).

Each row gets a deterministic id derived from the trace id, span id and the event's
position in its span, so a batch delivered twice maps to the same ids; that is what makes
the aggregator's inserts idempotent.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

from asyncpg.pgproto.pgproto import UUID as _FastUUID

from ..exporter.events import API_REQUEST, api_request_fields, domain_event_type
from ..exporter.wire import SpanRecord
from ..instrumentation import semconv
from ..instrumentation.privacy import is_pseudonym

_SERVER_SPAN_INDEX = 0xFFFF  # position used for the span itself, after any event index

_SESSION_ID_ATTR = semconv.FIELD_ATTRIBUTES["session_id"]


class EventRow(NamedTuple):
    event_id: uuid.UUID
    occurred_at: datetime
    event_type: str
    user_hash: str | None
    session_id: uuid.UUID | None
    properties: dict[str, Any]


def _dumps_stdlib(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


try:  # orjson is ~5x faster on the aggregator's hot path; the stdlib is the fallback
    import orjson

    def dumps_json(value: Any) -> str:
        """Compact JSON text for JSONB parameters."""
        return orjson.dumps(value).decode()

except ImportError:  # pragma: no cover - depends on the installation
    dumps_json = _dumps_stdlib


def event_id(trace_id: bytes, span_id: bytes, index: int) -> uuid.UUID:
    """Deterministic id of the ``index``-th event of a span."""
    digest = hashlib.blake2b(trace_id + span_id + index.to_bytes(4, "big"), digest_size=16).digest()
    # asyncpg's C UUID: a uuid.UUID subclass (equal, same hash), ~10x cheaper to build.
    return _FastUUID(digest)  # type: ignore[no-any-return]


def staging_record(row: EventRow) -> tuple[Any, ...]:
    """``row`` as the aggregator copies it into its staging table (properties as JSON text)."""
    return (
        row.event_id,
        row.occurred_at,
        row.event_type,
        row.user_hash,
        row.session_id,
        dumps_json(row.properties),
    )


def _time(unix_nano: int) -> datetime:
    return datetime.fromtimestamp(unix_nano / 1e9, tz=UTC)


@functools.lru_cache(maxsize=65_536)
def _valid_pseudonym(value: str) -> bool:
    return is_pseudonym(value)


def _user(attributes: dict[str, Any], fallback: str | None) -> str | None:
    value = attributes.get(semconv.USER_HASH, fallback)
    # One regex match per distinct learner, not per span (bounded cache).
    return value if isinstance(value, str) and _valid_pseudonym(value) else None


def _session(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return _FastUUID(str(value))  # type: ignore[no-any-return]
    except ValueError:
        return None


def rows_from_span(record: SpanRecord) -> list[EventRow]:
    """Event rows carried by one span (possibly none)."""
    rows: list[EventRow] = []
    span_user = _user(record.attributes, None)
    span_session = _session(record.attributes.get(_SESSION_ID_ATTR))
    span_session_text = record.attributes.get(_SESSION_ID_ATTR)
    fields = semconv.ATTRIBUTE_FIELDS
    trace_id, span_id = record.trace_id, record.span_id
    for index, event in enumerate(record.events):
        event_type = domain_event_type(event.name)
        if event_type is None:
            continue
        attributes = event.attributes
        properties: dict[str, Any] = {}
        for key, value in attributes.items():
            field = fields.get(key)
            if field is not None:
                properties[field] = value
        session_text = properties.get("session_id")
        if session_text is None or session_text == span_session_text:
            session_id = span_session
        else:
            session_id = _session(session_text) or span_session
        user = _user(attributes, span_user) if semconv.USER_HASH in attributes else span_user
        rows.append(
            EventRow(
                event_id(trace_id, span_id, index),
                _time(event.time_unix_nano),
                event_type,
                user,
                session_id,
                properties,
            )
        )
    request = api_request_fields(record)
    if request is not None:
        rows.append(
            EventRow(
                event_id(trace_id, span_id, _SERVER_SPAN_INDEX),
                _time(record.end_unix_nano),
                API_REQUEST,
                span_user,
                None,
                request,
            )
        )
    return rows
