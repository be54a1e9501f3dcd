"""The event-sequence store's refresh from PostgreSQL: every learning event exactly once.

Reads the ``analysis_events`` view (revision 0009, the API role's only access to raw events)
on the commit-ordered watermark of revision 0008: a refresh takes ``horizon =
pg_snapshot_xmin(pg_current_snapshot())`` and reads ``stored_xid >= watermark AND stored_xid <
horizon``, then keeps ``horizon`` as the next watermark. Every transaction below a snapshot's
xmin has ended, and none at or above the previous horizon was read before, so each stored row
is read once, whatever order the aggregator's rounds committed in (docs/aggregator.md).

:class:`AnalysisStore` is what the API holds: one store, refreshed before a query that finds it
older than ``max_staleness_s``, one refresh reading at a time, outside the lock queries take.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
import numpy as np

from ...exporter.admission import oldest_day
from .periods import US
from .store import NEVER, PROPERTIES, Coded, EventBatch, EventStore

VIEW = "analysis_events"
TEXT = ("user_hash", "event_type", *PROPERTIES)
_NUMBER = r"^[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$"
# Fixed-width rows only, so binary COPY output is read by numpy directly: texts travel as 64-bit
# hashes (0: none) and are named by one dictionary query in the same snapshot.
FIXED = (
    ("time_us", "time_us", ">i8"),
    ("tie", "tie", ">i8"),
    *((name, f"coalesce(hashtextextended({name}, 0), 0)", ">i8") for name in TEXT),
    *(
        (name, f"CASE WHEN {name} ~ '{_NUMBER}' THEN {name}::float8 ELSE 0 END", ">f8")
        for name in ("xp_amount", "duration_s")
    ),
)
ROW = np.dtype(
    [
        ("fields", ">i2"),
        *(field for name, _, kind in FIXED for field in ((f"len_{name}", ">i4"), (name, kind))),
    ]
)
HEADER, TRAILER = 19, 2
T = TypeVar("T")


class _Rows:
    """Collects binary ``COPY`` output in whole rows (chunks do not align to rows)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.pending = b""
        self.skip = HEADER

    async def __call__(self, chunk: bytes) -> None:
        data = self.pending + bytes(chunk)
        if self.skip:
            cut = min(self.skip, len(data))
            data, self.skip = data[cut:], self.skip - cut
        whole = len(data) // ROW.itemsize * ROW.itemsize
        if whole:
            self.parts.append(np.frombuffer(data[:whole], ROW).copy())
        self.pending = data[whole:]

    def rows(self) -> np.ndarray:
        if self.pending not in (b"", b"\xff\xff"):
            raise ValueError("analysis_events: unexpected binary COPY layout")
        return np.concatenate(self.parts) if self.parts else np.empty(0, ROW)


def _coded(hashes: np.ndarray, names: dict[int, str]) -> Coded:
    uniques, inverse = np.unique(hashes, return_inverse=True)
    values: list[str | None] = [None if int(h) == 0 else names[int(h)] for h in uniques]
    return Coded(values, np.where(hashes == 0, -1, inverse).astype(np.int32))


async def _dictionaries(conn: asyncpg.Connection, where: str, args: list[int]) -> dict[str, dict[int, str]]:
    """Per text column: hash -> text of every value in the range (one scan, grouping sets)."""
    sets = ", ".join(f"({name})" for name in TEXT)
    value = f"coalesce({', '.join(TEXT)})"
    grouping = f"GROUPING({', '.join(TEXT)})"
    query = (
        f"SELECT {grouping} AS g, {value} AS v, hashtextextended({value}, 0) AS h "
        f"FROM {VIEW} WHERE {where} GROUP BY GROUPING SETS ({sets})"
    )
    out: dict[str, dict[int, str]] = {name: {} for name in TEXT}
    width = len(TEXT)
    for record in await conn.fetch(query, *args):
        if record["v"] is None:
            continue
        # GROUPING sets a bit (first column = most significant) for every column *not* grouped.
        column = next(i for i in range(width) if not (record["g"] >> (width - 1 - i)) & 1)
        names = out[TEXT[column]]
        h = int(record["h"])
        if h == 0 or names.setdefault(h, record["v"]) != record["v"]:
            raise ValueError(f"analysis_events: two {TEXT[column]} values share a 64-bit hash")
    return out


LEARNERS = """
SELECT user_hash, (extract(epoch FROM first_activity_at) * 1000000)::bigint AS first_us, previous_hash
FROM analysis_learners WHERE $1::text[] IS NULL OR user_hash = ANY($1::text[])
"""
"""First activity and key link of the learners a batch touches (all at the first load): the aggregator
changes a learner's row only in the transaction that stores one of its events (revision
0020_funnels_finish), so the rows a batch touches are every row that changed."""


@dataclass
class Learners:
    users: list[str]
    first_us: np.ndarray
    previous: list[str | None]


NO_LEARNERS = Learners([], np.empty(0, np.int64), [])


async def _learners(conn: asyncpg.Connection, users: list[str] | None) -> Learners:
    records = await conn.fetch(LEARNERS, users)
    return Learners(
        [r["user_hash"] for r in records],
        np.fromiter((r["first_us"] for r in records), np.int64, len(records)),
        [r["previous_hash"] for r in records],
    )


async def read_new(conn: asyncpg.Connection, watermark: int | None) -> tuple[EventBatch, int, Learners]:
    """Rows stored since ``watermark`` (all rows when ``None``), the next watermark, and the
    ``analysis_learners`` rows of the learners they touch (all of them when ``None``).

    A refresh that finds nothing new costs one query, not two: the rows first, the dictionary and
    the learners only when there are rows; and none at all when no transaction ended since
    ``watermark``. Each query plans and opens every daily partition (its BRIN index on
    ``stored_xid``): tens of milliseconds on a loaded server even when nothing is new.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        horizon = int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
        if watermark is not None and horizon <= watermark:
            return _batch(np.empty(0, ROW), _no_names()), watermark, NO_LEARNERS
        if watermark is not None:
            # The planner costs the scan of every daily partition high enough to JIT-compile it
            # (460 functions for 92 partitions): 1.7 s of the 1.9 s an empty read took at load
            # average 14, 11-60 ms without. The range is nearly always small; the first load keeps it.
            await conn.execute("SET LOCAL jit = off")
        where = "stored_xid < $1" if watermark is None else "stored_xid >= $2 AND stored_xid < $1"
        args: list[int] = [horizon] if watermark is None else [horizon, watermark]
        sink = _Rows()
        columns = ", ".join(expression for _, expression, _ in FIXED)
        await conn.copy_from_query(
            f"SELECT {columns} FROM {VIEW} WHERE {where}", *args, output=sink, format="binary"
        )
        rows = sink.rows()
        if watermark is not None and not len(rows):
            return _batch(rows, _no_names()), horizon, NO_LEARNERS
        names = await _dictionaries(conn, where, args)
        touched = None if watermark is None else list(names["user_hash"].values())
        learners = await _learners(conn, touched) if touched is None or touched else NO_LEARNERS
    return _batch(rows, names), horizon, learners


def _no_names() -> dict[str, dict[int, str]]:
    return {name: {} for name in TEXT}


def _batch(rows: np.ndarray, names: dict[str, dict[int, str]]) -> EventBatch:
    return EventBatch(
        user=_coded(rows["user_hash"], names["user_hash"]),
        time_us=rows["time_us"].astype(np.int64),
        event_type=_coded(rows["event_type"], names["event_type"]),
        tie=rows["tie"].astype(np.int64),
        props={p: _coded(rows[p], names[p]) for p in PROPERTIES},
        xp=rows["xp_amount"].astype(np.float64),
        duration_s=rows["duration_s"].astype(np.float64),
    )


def retention_cutoff_us(retention_days: int, now_s: float | None = None) -> int:
    """The first instant raw retention keeps: midnight UTC of its oldest day.

    The aggregator admits events from that day on and drops whole daily partitions before it
    (``exporter.admission.oldest_day``), so the store forgets at the same granularity: it holds
    what the raw table holds, and its rows change once a day, not at every refresh (a cutoff
    moving with the clock dropped a few rows each time, which rewrote every column and made
    every saved funnel's answer stale).
    """
    day = oldest_day(
        retention_days, datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC).date()
    )
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * US


class AnalysisStore:
    """The API's store: refreshed lazily, at most every ``max_staleness_s``."""

    def __init__(
        self,
        max_staleness_s: float = 5.0,
        retention_days: int | None = None,
        erased: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = EventStore()
        self.erased = erased
        """Learners (pseudonyms) whose rows must go: the tombstone of erased learners. An erasure
        tombstones first and deletes the rows after, so rows read in between are dropped here."""
        self.retention_days = retention_days
        """Rows older than this many days are forgotten at each refresh (the raw table's retention)."""
        self.watermark: int | None = None
        self.max_staleness_s = max_staleness_s
        self.refreshed_at = float("-inf")
        self.generation = 0
        """Changes exactly when the store's rows change (a cache key: same generation, same answers)."""
        self._oldest_us = NEVER
        """No row is older than this (a lower bound: the cutoff is applied only when it can drop rows)."""
        self._lock = asyncio.Lock()
        """Held while the store's rows change or a query reads them."""
        self._reading = asyncio.Lock()
        """Held by the one refresh reading PostgreSQL (not the store's lock: queries go on)."""

    async def refresh(
        self, conn: asyncpg.Connection, force: bool = False, max_age_s: float | None = None
    ) -> int:
        """Read what was stored since the last refresh if older than ``max_age_s`` (default
        ``max_staleness_s``) or ``force``; the number of rows added."""
        async with self._reading:
            return await self._refresh(conn, force, max_age_s)

    async def forget_erased(self) -> int:
        """Drop the rows of learners the tombstone names now (after it changed); rows removed."""
        async with self._lock:
            removed = await asyncio.to_thread(self._drop_erased)
            if removed:
                self.generation += 1
            return removed

    def _drop_erased(self, users: list[str | None] | None = None) -> int:
        """Drop the erased among ``users`` (default: every learner known); rows removed."""
        if self.erased is None:
            return 0
        known = self.store.learners.codes
        values = self.store.learners.values if users is None else users
        codes = {known[v] for v in values if v is not None and v in known and self.erased(v)}
        return self.store.drop_learners(codes) if codes else 0

    async def query(self, conn: asyncpg.Connection, compute: Callable[[EventStore], T]) -> tuple[T, int]:
        """Refresh if stale, then ``compute(store)`` off the event loop, with the store's generation.

        One at a time with refreshes: a merge never runs under a query.
        """
        if self._stale(self.max_staleness_s):
            async with self._reading:  # after an in-flight refresh, this one finds the store fresh
                await self._refresh(conn, False, None)
        async with self._lock:
            generation = self.generation
            return await asyncio.to_thread(compute, self.store), generation

    def _stale(self, max_age_s: float) -> bool:
        return time.monotonic() - self.refreshed_at >= max_age_s

    async def _refresh(self, conn: asyncpg.Connection, force: bool, max_age_s: float | None) -> int:
        """Under ``_reading``: the read runs outside the store's lock (queries go on meanwhile)."""
        if not force and not self._stale(self.max_staleness_s if max_age_s is None else max_age_s):
            return 0
        batch, horizon, learners = await read_new(conn, self.watermark)
        async with self._lock:
            return await self._apply(batch, horizon, learners)

    async def _apply(self, batch: EventBatch, horizon: int, learners: Learners) -> int:
        changed = False
        before = len(self.store)
        if len(batch):
            # numpy releases the GIL for the sorts; the merge runs off the event loop.
            await asyncio.to_thread(self.store.merge, batch)
            self._oldest_us = min(self._oldest_us, int(batch.time_us.min()))
        if learners.users:
            await asyncio.to_thread(
                self.store.set_learners, learners.users, learners.first_us, learners.previous
            )
            changed = True
        removed = 0
        if self.retention_days is not None:
            cutoff = retention_cutoff_us(self.retention_days)
            if self._oldest_us < cutoff:
                removed = await asyncio.to_thread(self.store.drop_before, cutoff)
                self._oldest_us = cutoff
        if len(batch) or learners.users:
            # Only the learners this refresh read can bring erased rows: the tombstone changes
            # only through forget_erased, which checks every learner then.
            users = [*batch.user.values, *learners.users]
            removed += await asyncio.to_thread(self._drop_erased, users)
        if changed or removed or len(self.store) != before:
            self.generation += 1
        self.watermark = horizon
        self.refreshed_at = time.monotonic()
        return len(batch)
