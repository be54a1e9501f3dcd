"""Catching up from PostgreSQL's raw events when the bus no longer holds what the forwarder missed.

The bus keeps entries for a while (its length limit); the raw events stay for ``raw_retention_days``.
A forwarder away longer than the bus keeps entries (an LRS outage of weeks) finds its group's cursor
behind the stream's first entry: entries it never delivered were trimmed. Their events are in
``analytics_events`` (the aggregator stored them), each with ``stored_xid``, the id of the transaction
that stored it (migration 0008). The forwarder re-reads them from there, mapped by the same function to
the same statement ids, so what the LRS already holds is answered "nothing new" and the rest lands.

**Where to start (the watermark).** Every transaction that commits after a moment T has an id at or
above ``pg_snapshot_xmin`` of a snapshot taken at T (the ones running at T are at or above it, later
ones get larger ids). So while it forwards, the forwarder takes *marks*: a snapshot's xmin ``W``, then
Redis ``TIME`` ``R``. An entry whose id time is after ``R`` reached the bus after the snapshot, so the
transaction that stored its events has an id ``>= W``. When it acknowledges entries up to ``L`` on a
stream, the forwarder records there the ``W`` of the newest mark with ``R`` before ``L``'s time
(``resume_xid:<stream>``): every entry after ``L`` is stored at or above it. (Stated limit: Redis ids
follow Redis's clock; a clock stepped back makes ids run ahead of it, and a mark then too young.)

**How far (the end).** The catch-up reads ``stored_xid`` in ``[resume, end)`` where ``end`` is
``pg_snapshot_xmax`` when the gap was found: transactions that began later store entries read from the
bus after that, which the group reads itself. It first waits until the snapshot xmin passes ``end``
(the rounds in flight then have committed), then pages by ``(stored_xid, event_id)``; the cursor is kept
in Redis after each delivered page, so a killed forwarder resumes the catch-up where it stood.
Everything else in that range (events of other shards, events the group did deliver) is sent again and
is a no-op in the LRS: the range errs on the side of too much, never too little.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import orjson

from ..consumer.mapping import EventRow, RawRecord, rows_of

PAGE_ROWS = 2000
XID_WINDOW = 5000
"""Transaction ids per page query: PostgreSQL sorts only the rows of this window (BRIN-found)."""
SETTLE_TIMEOUT_S = 60.0


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def before(entry_id: tuple[int, int]) -> str:
    """The id just before ``entry_id`` (a group set there reads ``entry_id`` next)."""
    ms, seq = entry_id
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms > 0 else "0-0"


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream and the group stand, from ``XINFO STREAM`` and ``XINFO GROUPS``."""

    first: tuple[int, int] | None
    length: int
    added: int | None
    """Entries ever added (``None``: Redis < 7 does not count them, and gaps cannot be seen)."""
    last_delivered: tuple[int, int] | None
    """``None``: the group does not exist."""
    entries_read: int | None

    @property
    def gap(self) -> bool:
        """Entries after the group's cursor were trimmed before the group read them."""
        if self.first is None or self.last_delivered is None or self.first <= self.last_delivered:
            return False
        if self.added is None:
            return False
        if self.entries_read is None:  # Redis cannot tell (a cursor set without a count): assume so
            return True
        return self.added - self.entries_read > self.length

    def group_start(self) -> tuple[str, int | None]:
        """Where a new group starts: just before the first entry the stream holds (what was trimmed
        before the forwarder existed is not owed), with Redis's entry count, so gaps stay measurable."""
        if self.first is None:
            return "0-0", self.added
        return before(self.first), None if self.added is None else self.added - self.length


async def stream_position(redis: Any, stream: str, group: str) -> StreamPosition:
    info: Any = await redis.xinfo_stream(stream)
    first_entry = info.get("first-entry")
    first = parse_id(first_entry[0]) if first_entry else None
    added = info.get("entries-added")
    position = StreamPosition(first, int(info["length"]), None if added is None else int(added), None, None)
    groups: Any = await redis.xinfo_groups(stream)
    for item in groups:
        name = item["name"].decode() if isinstance(item["name"], bytes) else str(item["name"])
        if name == group:
            read = item.get("entries-read")
            return StreamPosition(
                position.first,
                position.length,
                position.added,
                parse_id(item["last-delivered-id"]),
                None if read is None else int(read),
            )
    return position


@dataclass
class CatchUp:
    """A catch-up in progress: ``stored_xid`` in ``[start, end)``, done up to ``cursor``."""

    start: int
    end: int
    cursor_xid: int
    cursor_event: str | None = None
    delivered: int = 0

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, data: bytes | str) -> CatchUp:
        return cls(**orjson.loads(data))

    def widened(self, start: int, end: int) -> CatchUp:
        """Another gap found meanwhile: one range covering both (from the start if it begins earlier)."""
        if start < self.start:
            return CatchUp(start, max(end, self.end), start)
        return CatchUp(self.start, max(end, self.end), self.cursor_xid, self.cursor_event, self.delivered)


SNAPSHOT_SQL = (
    "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
    "FROM pg_current_snapshot() AS s"
)


async def snapshot(pool: asyncpg.Pool) -> tuple[int, int]:
    """(xmin, xmax) of a snapshot taken now."""
    row = await pool.fetchrow(SNAPSHOT_SQL)
    assert row is not None
    return int(row[0]), int(row[1])


async def wait_settled(pool: asyncpg.Pool, end: int, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
    """Wait until every transaction below ``end`` has ended (rounds in flight committed or gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        xmin, _ = await snapshot(pool)
        if xmin >= end:
            return True
        await asyncio.sleep(0.2)
    return False


PAGE_SQL = """
SELECT event_id, occurred_at, event_type, user_hash, session_id, properties::text, stored_xid
FROM analytics_events
WHERE stored_xid >= $1 AND stored_xid < $2 AND event_type = ANY($3::text[])
  AND (stored_xid > $1 OR event_id > $4::uuid)
ORDER BY stored_xid, event_id
LIMIT $5
"""
_NO_EVENT = "00000000-0000-0000-0000-000000000000"


async def next_page(
    pool: asyncpg.Pool, state: CatchUp, event_types: Sequence[str], limit: int = PAGE_ROWS
) -> tuple[list[EventRow], CatchUp]:
    """The next rows of the catch-up after its cursor, and the state once they are delivered.

    Empty windows of ``XID_WINDOW`` ids are skipped in the same call; no rows: the catch-up is done.
    """
    xid, event = state.cursor_xid, state.cursor_event
    while xid < state.end:
        upper = min(state.end, xid + XID_WINDOW)
        records = await pool.fetch(PAGE_SQL, xid, upper, list(event_types), event or _NO_EVENT, limit)
        if records:
            raw: list[RawRecord] = [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in records]
            last = records[-1]
            after = CatchUp(
                state.start, state.end, int(last[6]), str(last[0]), state.delivered + len(records)
            )
            return rows_of(raw), after
        xid, event = upper, None
    return [], CatchUp(state.start, state.end, state.end, None, state.delivered)
