"""Failed custom events: list them, and replay those the registry now accepts, exactly once.

Replay re-validates each failed event against the registry read from PostgreSQL now; those that pass
are inserted into ``analytics_events`` with their deterministic event id and rolled up in the same
transaction (:func:`..consumer.rollups.insert_events`, careful mode: events stored already, or repeated
on the stream, are left out). Replayed entries are then deleted from the stream; a crash between the
commit and the delete leaves them for the next run, which inserts nothing for them. So a replay run
twice changes nothing, and a replay racing the aggregator or another replay counts each event once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from ...exporter.bus import failed_events_key, time_id
from ...exporter.failed_events import VERSION_FIELD, FailedEvent
from ...exporter.settings import BusSettings
from ...instrumentation.custom_schemas import CustomRegistry, validate_event
from ..consumer.mapping import RawRecord, dumps_json
from ..consumer.rollups import insert_events, setup_connection
from ..storage.schema import ensure_partitions
from .registry import all_versions, registry_of

PAGE = 500


@dataclass
class ReplayResult:
    seen: int = 0
    replayed: int = 0
    """Events inserted now (new)."""
    already: int = 0
    """Events that passed but were stored already (an earlier replay, a duplicate entry)."""
    still_failing: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    """Still-failing events by their current reasons."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "replayed": self.replayed,
            "already_stored": self.already,
            "still_failing": self.still_failing,
            "reasons": self.reasons,
        }


async def failed_entries(
    client: Any, settings: BusSettings, *, event_type: str | None = None, since: datetime | None = None
) -> AsyncIterator[tuple[bytes, FailedEvent]]:
    """The failed events on the stream (oldest first), optionally of one schema and since a time
    (when they failed)."""
    key = failed_events_key(settings)
    start = time_id(since) if since is not None else "-"
    while True:
        page = await client.xrange(key, min=start, max="+", count=PAGE)
        if not page:
            return
        for entry_id, fields in page:
            event = FailedEvent.of_fields(fields)
            if event_type is None or event.schema == event_type:
                yield entry_id, event
        last = page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0]
        start = "(" + last
        if len(page) < PAGE:
            return


def record_of(event: FailedEvent) -> RawRecord:
    properties = {VERSION_FIELD: event.version, **event.properties}
    session = uuid.UUID(event.session_id) if event.session_id else None
    return (event.event_id, event.occurred_at, event.schema, event.user_hash, session, dumps_json(properties))


def _passes(registry: CustomRegistry, event: FailedEvent, result: ReplayResult) -> bool:
    errors = validate_event(registry, event.schema, event.version, dict(event.properties))
    if errors:
        result.still_failing += 1
        for error in errors:
            text = f"{error.pointer or '/'}: {error.reason}"
            result.reasons[text] = result.reasons.get(text, 0) + 1
    return not errors


async def _insert(conn: asyncpg.Connection, records: list[RawRecord]) -> int:
    await ensure_partitions(conn, {r[1].date() for r in records}, set())
    for attempt in range(5):
        try:
            async with conn.transaction():
                return await insert_events(conn, records, None, careful=True)
        except asyncpg.UniqueViolationError:  # inserted meanwhile by another replay: probe again
            await asyncio.sleep(0.05 * (attempt + 1))
    raise RuntimeError("replay kept racing another writer of the same events")


async def replay(
    conn: asyncpg.Connection,
    client: Any,
    settings: BusSettings,
    *,
    event_type: str | None = None,
    since: datetime | None = None,
) -> ReplayResult:
    """Replay the failed events that now validate; see the module docstring."""
    registry = registry_of(await all_versions(conn))
    await setup_connection(conn)
    result = ReplayResult()
    passing: dict[uuid.UUID, RawRecord] = {}
    entries: list[bytes] = []
    async for entry_id, event in failed_entries(client, settings, event_type=event_type, since=since):
        result.seen += 1
        if _passes(registry, event, result):
            passing.setdefault(event.event_id, record_of(event))
            entries.append(entry_id)
    records = list(passing.values())
    for start in range(0, len(records), PAGE):
        chunk = records[start : start + PAGE]
        inserted = await _insert(conn, chunk)
        result.replayed += inserted
    result.already = len(entries) - result.replayed
    if entries:
        await client.xdel(failed_events_key(settings), *entries)
    return result


def listing(event: FailedEvent, entry_id: bytes) -> dict[str, Any]:
    return {
        "entry": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(),
        "schema": event.schema,
        "version": event.version,
        "source": event.source,
        "errors": [e.as_dict() for e in event.errors],
    }


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
