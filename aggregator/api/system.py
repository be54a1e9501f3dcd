"""System metrics of the query API: per-route figures over a window from the route rollups.

A window is read as: the minutes of its partial first and last 10-minute blocks straight from
``system_metrics`` (per minute), and its whole span in between from an in-process cache of merged
*pieces*: whole UTC hours read from ``system_metrics_hourly`` (the aggregator keeps each of its
rows equal to the sum of its hour's minute rows, revision 0011_route_hours) and the 10-minute
blocks before the first and after the last whole hour read from the minute rows. Counts, errors
by type and DDSketch latency histograms add exactly, so the answer equals a read of every minute
(``tests/aggregator/api/test_system.py``); a cold 24-hour window reads ~24 rows per route where it
read 1,440. A piece is cached only once it ended :data:`SETTLE` ago (time for the aggregator to
roll in late batches); newer minutes are read as minutes, so the merged span stays cached for a
block's time. Pieces are re-read after :data:`BLOCK_TTL_S` (so even later data shows up).
Percentiles come from the merged histograms (:mod:`.histogram`, relative error <= 1 %).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from ..consumer import histogram

BLOCK = timedelta(minutes=10)
"""Width of a cached block (a divisor of an hour, aligned on the UTC epoch)."""
SETTLE = timedelta(minutes=2)
BLOCK_TTL_S = 600.0
KEEP = timedelta(hours=25)
"""Cached blocks older than this are dropped (the longest window is 24 h)."""

# One row per (bucket, route, method) with totals, and the merged maps flattened to
# (bucket, route, method, kind, key, count) rows: set-based merging in PostgreSQL. ``{table}`` and
# ``{at}`` are the minute or the hourly rollup and its time column (constants of this module).
_TOTALS_SQL = """
SELECT CASE WHEN $3 THEN date_bin($4::interval, {at}, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            ELSE $1 END AS bucket, route, method,
       sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       sum(client_errors)::bigint AS client_errors, max(latency_max_ms) AS max_ms
FROM {table} WHERE {at} >= $1 AND {at} < $2
GROUP BY 1, 2, 3
"""

_MAPS_SQL = """
WITH w AS (
    SELECT CASE WHEN $3 THEN date_bin($4::interval, {at}, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            ELSE $1 END AS bucket, route, method,
           latency_hist, errors_by_type
    FROM {table} WHERE {at} >= $1 AND {at} < $2
)
SELECT bucket, route, method, 'h' AS kind, b.key, sum(b.value::bigint)::bigint AS n
FROM w, jsonb_each_text(w.latency_hist) b GROUP BY 1, 2, 3, 5
UNION ALL
SELECT bucket, route, method, 'e' AS kind, b.key, sum(b.value::bigint)::bigint AS n
FROM w, jsonb_each_text(w.errors_by_type) b GROUP BY 1, 2, 3, 5
"""

BUCKET_TOTALS_SQL = _TOTALS_SQL.format(table="system_metrics", at="minute")
BUCKET_MAPS_SQL = _MAPS_SQL.format(table="system_metrics", at="minute")
HOUR_TOTALS_SQL = _TOTALS_SQL.format(table="system_metrics_hourly", at="hour")
HOUR_MAPS_SQL = _MAPS_SQL.format(table="system_metrics_hourly", at="hour")
HOUR = timedelta(hours=1)

RouteKey = tuple[str, str]


@dataclass
class RouteTotals:
    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    max_ms: float | None = None
    errors_by_type: dict[str, int] = field(default_factory=dict)
    latency_hist: dict[str, int] = field(default_factory=dict)

    def add(self, other: RouteTotals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.client_errors += other.client_errors
        if other.max_ms is not None:
            self.max_ms = other.max_ms if self.max_ms is None else max(self.max_ms, other.max_ms)
        for target, source in (
            (self.errors_by_type, other.errors_by_type),
            (self.latency_hist, other.latency_hist),
        ):
            for key, count in source.items():
                target[key] = target.get(key, 0) + count

    def quantile(self, q: float) -> float | None:
        return histogram.quantile(self.latency_hist, q)


Buckets = dict[datetime, dict[RouteKey, RouteTotals]]


async def read_buckets(
    conn: asyncpg.Connection, start: datetime, end: datetime, *, blocks: bool, hours: bool = False
) -> Buckets:
    """Routes' totals in ``[start, end)``: per :data:`BLOCK` if ``blocks``, else one bucket at ``start``.

    From the minute rows, or with ``hours`` from the hourly rows (``start`` and ``end`` on whole
    hours; buckets per hour).
    """
    out: Buckets = {}
    if end <= start:
        return out
    totals_sql, maps_sql = (HOUR_TOTALS_SQL, HOUR_MAPS_SQL) if hours else (BUCKET_TOTALS_SQL, BUCKET_MAPS_SQL)
    width = HOUR if hours else BLOCK
    for r in await conn.fetch(totals_sql, start, end, blocks, width):
        out.setdefault(r["bucket"], {})[(r["route"], r["method"])] = RouteTotals(
            requests=r["requests"], errors=r["errors"], client_errors=r["client_errors"], max_ms=r["max_ms"]
        )
    for r in await conn.fetch(maps_sql, start, end, blocks, width):
        totals = out.setdefault(r["bucket"], {}).setdefault((r["route"], r["method"]), RouteTotals())
        target = totals.latency_hist if r["kind"] == "h" else totals.errors_by_type
        target[r["key"]] = target.get(r["key"], 0) + r["n"]
    return out


def pieces_of(start: datetime, end: datetime) -> list[tuple[datetime, timedelta]]:
    """``[start, end)`` (on block bounds) as pieces: blocks up to the first whole hour, whole hours,
    then blocks; each ``(start, width)``."""
    out: list[tuple[datetime, timedelta]] = []
    at = start
    while at < end:
        width = HOUR if _floor(at, HOUR) == at and at + HOUR <= end else BLOCK
        out.append((at, width))
        at += width
    return out


def _floor(moment: datetime, width: timedelta) -> datetime:
    seconds = int(width.total_seconds())
    return datetime.fromtimestamp(int(moment.timestamp()) // seconds * seconds, UTC)


def _floor_block(moment: datetime) -> datetime:
    return _floor(moment, BLOCK)


def _merge(pieces: list[dict[RouteKey, RouteTotals]]) -> dict[RouteKey, RouteTotals]:
    """A new map with every piece added (the pieces are not changed)."""
    merged: dict[RouteKey, RouteTotals] = {}
    for piece in pieces:
        for key, totals in piece.items():
            merged.setdefault(key, RouteTotals()).add(totals)
    return merged


class BlockCache:
    """Merged per-route totals of settled whole pieces (see the module docstring)."""

    def __init__(self) -> None:
        self._pieces: dict[tuple[datetime, timedelta], tuple[float, dict[RouteKey, RouteTotals]]] = {}
        self._spans: dict[tuple[datetime, datetime], tuple[float, dict[RouteKey, RouteTotals]]] = {}

    def clear(self) -> None:
        self._pieces.clear()
        self._spans.clear()

    async def window(
        self, conn: asyncpg.Connection, since: datetime, until: datetime
    ) -> dict[RouteKey, RouteTotals]:
        """Every route's totals over ``[since, until)``."""
        first_full = _floor_block(since)
        if first_full < since:
            first_full += BLOCK
        # Only settled blocks come from the cache: the newest ones are still read as minutes, so
        # the merged span of whole blocks stays valid (and cached) for a whole block's time.
        last_full_end = min(_floor_block(until - SETTLE), _floor_block(until))
        pieces: list[dict[RouteKey, RouteTotals]] = []
        if first_full >= last_full_end:  # no whole block inside: minutes only
            pieces.extend((await read_buckets(conn, since, until, blocks=False)).values())
        else:
            pieces.extend((await read_buckets(conn, since, first_full, blocks=False)).values())
            pieces.extend((await read_buckets(conn, last_full_end, until, blocks=False)).values())
            pieces.append(await self._span(conn, first_full, last_full_end, until))
        return _merge(pieces)

    async def _span(
        self, conn: asyncpg.Connection, start: datetime, end: datetime, now: datetime
    ) -> dict[RouteKey, RouteTotals]:
        """Whole pieces ``[start, end)`` merged; kept while every piece in it is cached and settled."""
        mono = time.monotonic()
        cached = self._spans.get((start, end))
        if cached is not None and cached[0] > mono:
            return cached[1]
        wanted = pieces_of(start, end)
        merged = _merge(await self._whole_pieces(conn, wanted, now))
        expiry = min(self._pieces[p][0] for p in wanted)
        self._spans = {(start, end): (expiry, merged)} if expiry > mono else {}
        return merged

    async def _whole_pieces(
        self, conn: asyncpg.Connection, wanted: list[tuple[datetime, timedelta]], now: datetime
    ) -> list[dict[RouteKey, RouteTotals]]:
        mono = time.monotonic()
        missing = [p for p in wanted if p not in self._pieces or self._pieces[p][0] < mono]
        fresh: Buckets = {}
        hours = [at for at, width in missing if width == HOUR]
        if hours:  # one read from the hourly rows
            fresh.update(await read_buckets(conn, hours[0], hours[-1] + HOUR, blocks=True, hours=True))
        run: list[datetime] = []
        for at, width in [*missing, (datetime.max.replace(tzinfo=UTC), HOUR)]:
            if run and (width != BLOCK or at != run[-1] + BLOCK):  # one read per run of blocks
                fresh.update(await read_buckets(conn, run[0], run[-1] + BLOCK, blocks=True))
                run = []
            if width == BLOCK:
                run.append(at)
        for piece in missing:
            at, width = piece
            settled = at + width + SETTLE <= now
            # An unsettled piece is stored already expired: used for this answer only.
            self._pieces[piece] = (mono + BLOCK_TTL_S if settled else mono - 1.0, fresh.get(at, {}))
        oldest = now - KEEP
        keep = set(wanted)
        for piece in [p for p in self._pieces if p[0] < oldest and p not in keep]:
            del self._pieces[piece]
        return [self._pieces[p][1] for p in wanted]
