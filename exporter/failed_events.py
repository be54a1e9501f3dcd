"""Failed custom events: what an entry refused, kept on a stream for replay (docs/custom-events.md).

Every entry that refuses a custom event (the track endpoint, the OTLP gateway, the aggregator) writes it
here with the schema and version it claimed, each error's JSON pointer and reason, and what replay needs
to store it later: a deterministic event id, its time, the learner's pseudonym, its session and its
properties (strings scrubbed of e-mail addresses; the stream is capped at :data:`MAX_LEN` entries).
``studyin-analytics failed-events replay`` re-validates them against the registry as it is now; the id
makes a replay exactly-once (a second run, or a duplicate entry, inserts nothing).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..instrumentation.custom_schemas import IDENTITY_TOKENS, EventError
from ..instrumentation.emails import scrub_emails
from ..instrumentation.privacy import is_pseudonym
from .bus import failed_events_key
from .settings import BusSettings

MAX_LEN = 1_000_000
"""Failed events kept at most (approximate ``MAXLEN``): the oldest go first."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
VERSION_FIELD = "$version"
"""Property of a stored custom event holding its schema version (no property name starts with ``$``)."""


def event_id(trace_id: bytes, span_id: bytes, index: int) -> uuid.UUID:
    """Deterministic id of the ``index``-th event of a span: the aggregator's rule
    (``aggregator/consumer/mapping.event_id``; a test keeps them equal)."""
    return uuid.UUID(
        bytes=hashlib.blake2b(trace_id + span_id + index.to_bytes(4, "big"), digest_size=16).digest()
    )


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_emails(value)
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value if isinstance(v, str | int | float | bool)]
    return value if isinstance(value, int | float | bool) or value is None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class FailedEvent:
    event_id: uuid.UUID
    time_us: int
    schema: str
    version: str
    errors: tuple[EventError, ...]
    properties: Mapping[str, Any]
    user_hash: str | None = None
    session_id: str | None = None
    source: str = "aggregator"

    @property
    def occurred_at(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.time_us)

    def fields(self) -> dict[str, str]:
        return {
            "event_id": str(self.event_id),
            "time_us": str(self.time_us),
            "schema": self.schema[:200],
            "version": self.version[:50],
            "errors": json.dumps([e.as_dict() for e in self.errors]),
            "properties": json.dumps({str(k)[:64]: _scrubbed(v) for k, v in self.properties.items()}),
            "user_hash": self.user_hash or "",
            "session_id": self.session_id or "",
            "source": self.source,
        }

    @classmethod
    def of_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> FailedEvent:
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls(
            uuid.UUID(text["event_id"]),
            int(text["time_us"]),
            text["schema"],
            text["version"],
            tuple(EventError(e["pointer"], e["reason"]) for e in json.loads(text["errors"])),
            json.loads(text["properties"]),
            text.get("user_hash") or None,
            text.get("session_id") or None,
            text.get("source", "aggregator"),
        )


PIN_TTL_S = 7 * 86_400
"""How long a tracked failed event's first time is remembered (the bus's retention): a retry within it
is kept with the same id and time, so replay stores it once."""
PIN_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
return redis.call('GET', KEYS[1])
"""
"""Pin a failed event's time: the first writer's time, returned to every later one (one key: Cluster safe)."""


def pin_key(settings: BusSettings, event_id: uuid.UUID) -> str:
    """The key that holds the first time of the failed event ``event_id`` (:data:`PIN_SCRIPT`)."""
    return f"{failed_events_key(settings)}:pin:{event_id}"


def tracked_event_id(
    user_hash: str, idempotency_key: str | None, index: int, content: Mapping[str, str], minute: int
) -> uuid.UUID:
    """Deterministic id of a custom event the track endpoint refused, so a retried POST keeps one id.

    With the client's ``Idempotency-Key``: from the caller, the key and the item's index. Without: from
    the caller, the index, what is kept of the event (``content``: schema, version, the protected and
    scrubbed properties, so no raw identity is hashed) and the minute of receipt, so a retry within
    the same minute is recognised (later ones are stored again: send the header)."""
    if idempotency_key is not None:
        parts = ["key", user_hash, idempotency_key, str(index)]
    else:
        parts = ["content", user_hash, str(index), str(minute), json.dumps(content, sort_keys=True)]
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16, person=b"studyin-track").digest()
    return uuid.UUID(bytes=digest)


def add_commands(settings: BusSettings, failed: Iterable[FailedEvent]) -> list[tuple[str, dict[str, str]]]:
    """``(key, fields)`` of the ``XADD`` of each failed event (with ``maxlen=MAX_LEN, approximate=True``)."""
    key = failed_events_key(settings)
    return [(key, event.fields()) for event in failed]


def protected(
    properties: Mapping[str, Any],
    compiled_pseudonymous: frozenset[str] | None,
    pseudonymize: Callable[[str], str] | None,
) -> dict[str, Any]:
    """``properties`` as a failed event may keep them: a property the schema marks pseudonymous, or whose
    name looks like identity (declared or not), is HMAC'd (dropped without a key); e-mails are scrubbed
    later (:meth:`FailedEvent.fields`)."""
    out: dict[str, Any] = {}
    for key, value in properties.items():
        identity = key in (compiled_pseudonymous or ()) or bool(
            set(re.split(r"[_\d]+", str(key))) & IDENTITY_TOKENS
        )
        if not identity:
            out[key] = value
        elif pseudonymize is not None and isinstance(value, str | int) and not isinstance(value, bool):
            out[key] = value if is_pseudonym(value) else pseudonymize(str(value))
    return out
