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
import orjson

from ..consumer import histogram

BLOCK = timedelta(minutes=10)
"""Width of a cached block (a divisor of an hour, aligned on the UTC epoch)."""
SETTLE = timedelta(minutes=2)
BLOCK_TTL_S = 600.0
KEEP = timedelta(hours=25)
"""Cached blocks older than this are dropped (the longest window is 24 h)."""

# One read per request whatever it needs (a UNION ALL of segments), the maps as JSON text merged in
# Python (orjson), which measured 10-15x faster than merging them with jsonb_each_text in SQL.
_SEGMENT_SQL = """
SELECT {index} AS segment, {bucket} AS bucket, route, method, requests, errors, client_errors,
       latency_max_ms AS max_ms, latency_hist::text AS hist, errors_by_type::text AS by_type
FROM {table} WHERE {at} >= ${start} AND {at} < ${end}"""
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
MINUTES, BLOCKS, HOURS = "minutes", "blocks", "hours"
Segment = tuple[datetime, datetime, str]
"""``(start, end, kind)``: ``minutes`` (one bucket at ``start``), ``blocks`` (a bucket per :data:`BLOCK`
of minute rows) or ``hours`` (a bucket per hourly row; ``start`` and ``end`` on whole hours)."""
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


def _segment_sql(index: int, position: int, kind: str) -> str:
    """The select of segment ``index``, its bounds the ``position``-th pair of parameters."""
    bucket = {
        MINUTES: f"${2 * position + 1}::timestamptz",
        BLOCKS: f"date_bin('{int(BLOCK.total_seconds())} seconds'::interval, minute, {_ORIGIN})",
        HOURS: "hour",
    }[kind]
    table, at = ("system_metrics_hourly", "hour") if kind == HOURS else ("system_metrics", "minute")
    return _SEGMENT_SQL.format(
        index=index, bucket=bucket, table=table, at=at, start=2 * position + 1, end=2 * position + 2
    )


async def read_segments(conn: asyncpg.Connection, segments: list[Segment]) -> list[Buckets]:
    """Routes' totals of each segment (see :data:`Segment`), in one query."""
    out: list[Buckets] = [{} for _ in segments]
    wanted = [(i, seg) for i, seg in enumerate(segments) if seg[0] < seg[1]]
    if not wanted:
        return out
    sql = "\nUNION ALL".join(_segment_sql(i, j, kind) for j, (i, (_s, _e, kind)) in enumerate(wanted))
    args = [bound for _i, (start, end, _kind) in wanted for bound in (start, end)]
    loads = orjson.loads
    for r in await conn.fetch(sql, *args):
        routes = out[r["segment"]].setdefault(r["bucket"], {})
        key = (r["route"], r["method"])
        row = RouteTotals(
            r["requests"], r["errors"], r["client_errors"], r["max_ms"], loads(r["by_type"]), loads(r["hist"])
        )
        totals = routes.get(key)
        if totals is None:
            routes[key] = row
        else:
            totals.add(row)
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
        """Every route's totals over ``[since, until)`` (one query)."""
        first_full = _floor_block(since)
        if first_full < since:
            first_full += BLOCK
        # Only settled blocks come from the cache: the newest ones are still read as minutes, so
        # the merged span of whole blocks stays valid (and cached) for a whole block's time.
        last_full_end = min(_floor_block(until - SETTLE), _floor_block(until))
        if first_full >= last_full_end:  # no whole block inside: minutes only
            (minutes,) = await read_segments(conn, [(since, until, MINUTES)])
            return _merge(list(minutes.values()))
        ends: list[Segment] = [(since, first_full, MINUTES), (last_full_end, until, MINUTES)]
        mono = time.monotonic()
        cached = self._spans.get((first_full, last_full_end))
        if cached is not None and cached[0] > mono:
            head, tail = await read_segments(conn, ends)
            return _merge([*head.values(), *tail.values(), cached[1]])
        wanted = pieces_of(first_full, last_full_end)
        missing = [p for p in wanted if p not in self._pieces or self._pieces[p][0] < mono]
        head, tail, *fills = await read_segments(conn, ends + _segments_of(missing))
        fresh: Buckets = {}
        for buckets in fills:
            fresh.update(buckets)
        self._keep(missing, fresh, wanted, until, mono)
        merged = _merge([self._pieces[p][1] for p in wanted])
        expiry = min(self._pieces[p][0] for p in wanted)
        self._spans = {(first_full, last_full_end): (expiry, merged)} if expiry > mono else {}
        return _merge([*head.values(), *tail.values(), merged])

    def _keep(
        self,
        missing: list[tuple[datetime, timedelta]],
        fresh: Buckets,
        wanted: list[tuple[datetime, timedelta]],
        now: datetime,
        mono: float,
    ) -> None:
        """Cache the pieces just read; drop pieces older than :data:`KEEP` this window does not use."""
        for piece in missing:
            at, width = piece
            settled = at + width + SETTLE <= now
            # An unsettled piece is stored already expired: used for this answer only.
            self._pieces[piece] = (mono + BLOCK_TTL_S if settled else mono - 1.0, fresh.get(at, {}))
        oldest = now - KEEP
        keep = set(wanted)
        for piece in [p for p in self._pieces if p[0] < oldest and p not in keep]:
            del self._pieces[piece]


def _segments_of(missing: list[tuple[datetime, timedelta]]) -> list[Segment]:
    """The reads that fill ``missing`` pieces: one over their hours, one per run of blocks."""
    segments: list[Segment] = []
    hours = [at for at, width in missing if width == HOUR]
    if hours:
        segments.append((hours[0], hours[-1] + HOUR, HOURS))
    run: list[datetime] = []
    for at, width in [*missing, (datetime.max.replace(tzinfo=UTC), HOUR)]:
        if run and (width != BLOCK or at != run[-1] + BLOCK):
            segments.append((run[0], run[-1] + BLOCK, BLOCKS))
            run = []
        if width == BLOCK:
            run.append(at)
    return segments
