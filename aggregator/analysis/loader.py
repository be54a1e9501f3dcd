"""The event-sequence store's refresh from PostgreSQL: every learning event exactly once.

Reads the ``analysis_events`` view (revision 0009, the API role's only access to raw events)
on the commit-ordered watermark of revision 0008: a refresh takes ``horizon =
pg_snapshot_xmin(pg_current_snapshot())`` and reads ``stored_xid >= watermark AND stored_xid <
horizon``, then keeps ``horizon`` as the next watermark. Every transaction below a snapshot's
xmin has ended, and none at or above the previous horizon was read before, so each stored row
is read once, whatever order the aggregator's rounds committed in (docs/aggregator.md).

:class:`AnalysisStore` is what the API holds: one store, refreshed at most every
``max_staleness_s`` before a query, one refresh at a time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import numpy as np

from .store import PROPERTIES, EventBatch, EventStore

VIEW = "analysis_events"
COLUMNS = ("user_hash", "time_us", "event_type", "tie", *PROPERTIES, "xp_amount", "duration_s")
CHUNK = 100_000


def _number(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        number = float(value)
    except ValueError:
        return 0.0
    return number if np.isfinite(number) else 0.0


def batch_of(records: list[Any]) -> EventBatch:
    """An :class:`EventBatch` of ``analysis_events`` records (columns in :data:`COLUMNS` order)."""
    columns = list(zip(*records, strict=True)) if records else [() for _ in COLUMNS]
    by_name = dict(zip(COLUMNS, columns, strict=True))
    return EventBatch(
        user=list(by_name["user_hash"]),
        time_us=np.asarray(by_name["time_us"], dtype=np.int64),
        event_type=list(by_name["event_type"]),
        tie=np.asarray(by_name["tie"], dtype=np.int64),
        props={p: list(by_name[p]) for p in PROPERTIES},
        xp=np.fromiter((_number(v) for v in by_name["xp_amount"]), np.float64, len(records)),
        duration_s=np.fromiter((_number(v) for v in by_name["duration_s"]), np.float64, len(records)),
    )


async def read_new(conn: asyncpg.Connection, watermark: int | None) -> tuple[EventBatch, int]:
    """Rows stored since ``watermark`` (all rows when ``None``) and the next watermark."""
    records: list[Any] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        horizon = int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
        where = "stored_xid < $1" if watermark is None else "stored_xid >= $2 AND stored_xid < $1"
        args: list[int] = [horizon] if watermark is None else [horizon, watermark]
        query = f"SELECT {', '.join(COLUMNS)} FROM {VIEW} WHERE {where}"
        cursor = await conn.cursor(query, *args)
        while True:
            chunk = await cursor.fetch(CHUNK)
            if not chunk:
                break
            records.extend(tuple(r) for r in chunk)
    return batch_of(records), horizon


class AnalysisStore:
    """The API's store: refreshed lazily, at most every ``max_staleness_s``."""

    def __init__(self, max_staleness_s: float = 5.0) -> None:
        self.store = EventStore()
        self.watermark: int | None = None
        self.max_staleness_s = max_staleness_s
        self.refreshed_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, conn: asyncpg.Connection, force: bool = False) -> int:
        """Read what was stored since the last refresh; the number of rows added."""
        async with self._lock:
            if not force and time.monotonic() - self.refreshed_at < self.max_staleness_s:
                return 0
            batch, horizon = await read_new(conn, self.watermark)
            if len(batch):
                # numpy releases the GIL for the sorts; the merge runs off the event loop.
                await asyncio.to_thread(self.store.merge, batch)
            self.watermark = horizon
            self.refreshed_at = time.monotonic()
            return len(batch)
