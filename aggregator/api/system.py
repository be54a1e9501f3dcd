"""System metrics of the query API: per-route figures over a window from the per-minute rollup.

A window is read as: the minutes of its partial first and last 10-minute blocks straight from
``system_metrics``, and its whole blocks from an in-process cache of per-block merged rows
(counts, errors by type, DDSketch latency histograms), kept merged per span. A block is cached
only once it ended :data:`SETTLE` ago (time for the aggregator to roll in late batches); blocks
newer than that are read as minutes, so the merged span of whole blocks stays cached for a
block's time. Blocks are re-read after :data:`BLOCK_TTL_S` (so even later data shows up). Any
window therefore reads at most ~:data:`BLOCK` + :data:`SETTLE` + :data:`BLOCK` of minute rows per
request, instead of up to
1,440 minutes of every route. Percentiles come from the merged histograms (:mod:`.histogram`,
relative error <= 1 %).
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
# (bucket, route, method, kind, key, count) rows: set-based merging in PostgreSQL.
BUCKET_TOTALS_SQL = """
SELECT CASE WHEN $3 THEN date_bin($4::interval, minute, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            ELSE $1 END AS bucket, route, method,
       sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       sum(client_errors)::bigint AS client_errors, max(latency_max_ms) AS max_ms
FROM system_metrics WHERE minute >= $1 AND minute < $2
GROUP BY 1, 2, 3
"""

BUCKET_MAPS_SQL = """
WITH w AS (
    SELECT CASE WHEN $3 THEN date_bin($4::interval, minute, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            ELSE $1 END AS bucket, route, method,
           latency_hist, errors_by_type
    FROM system_metrics WHERE minute >= $1 AND minute < $2
)
SELECT bucket, route, method, 'h' AS kind, b.key, sum(b.value::bigint)::bigint AS n
FROM w, jsonb_each_text(w.latency_hist) b GROUP BY 1, 2, 3, 5
UNION ALL
SELECT bucket, route, method, 'e' AS kind, b.key, sum(b.value::bigint)::bigint AS n
FROM w, jsonb_each_text(w.errors_by_type) b GROUP BY 1, 2, 3, 5
"""

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


async def read_buckets(conn: asyncpg.Connection, start: datetime, end: datetime, *, blocks: bool) -> Buckets:
    """Routes' totals in ``[start, end)``: per :data:`BLOCK` if ``blocks``, else one bucket at ``start``."""
    out: Buckets = {}
    if end <= start:
        return out
    for r in await conn.fetch(BUCKET_TOTALS_SQL, start, end, blocks, BLOCK):
        out.setdefault(r["bucket"], {})[(r["route"], r["method"])] = RouteTotals(
            requests=r["requests"], errors=r["errors"], client_errors=r["client_errors"], max_ms=r["max_ms"]
        )
    for r in await conn.fetch(BUCKET_MAPS_SQL, start, end, blocks, BLOCK):
        totals = out.setdefault(r["bucket"], {}).setdefault((r["route"], r["method"]), RouteTotals())
        target = totals.latency_hist if r["kind"] == "h" else totals.errors_by_type
        target[r["key"]] = target.get(r["key"], 0) + r["n"]
    return out


def _floor_block(moment: datetime) -> datetime:
    width = int(BLOCK.total_seconds())
    return datetime.fromtimestamp(int(moment.timestamp()) // width * width, UTC)


def _merge(pieces: list[dict[RouteKey, RouteTotals]]) -> dict[RouteKey, RouteTotals]:
    """A new map with every piece added (the pieces are not changed)."""
    merged: dict[RouteKey, RouteTotals] = {}
    for piece in pieces:
        for key, totals in piece.items():
            merged.setdefault(key, RouteTotals()).add(totals)
    return merged


class BlockCache:
    """Merged per-route totals of settled whole blocks (see the module docstring)."""

    def __init__(self) -> None:
        self._blocks: dict[datetime, tuple[float, dict[RouteKey, RouteTotals]]] = {}
        self._spans: dict[tuple[datetime, datetime], tuple[float, dict[RouteKey, RouteTotals]]] = {}

    def clear(self) -> None:
        self._blocks.clear()
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
        """Whole blocks ``[start, end)`` merged; kept while every block in it is cached and settled."""
        mono = time.monotonic()
        cached = self._spans.get((start, end))
        if cached is not None and cached[0] > mono:
            return cached[1]
        merged = _merge(await self._whole_blocks(conn, start, end, now))
        expiry = min(self._blocks[h][0] for h in self._blocks if start <= h < end)
        self._spans = {(start, end): (expiry, merged)} if expiry > mono else {}
        return merged

    async def _whole_blocks(
        self, conn: asyncpg.Connection, start: datetime, end: datetime, now: datetime
    ) -> list[dict[RouteKey, RouteTotals]]:
        mono = time.monotonic()
        blocks = []
        block = start
        while block < end:
            blocks.append(block)
            block += BLOCK
        missing = [h for h in blocks if h not in self._blocks or self._blocks[h][0] < mono]
        if missing:
            fresh = await read_buckets(conn, missing[0], missing[-1] + BLOCK, blocks=True)
            for h in missing:
                routes = fresh.get(h, {})
                settled = h + BLOCK + SETTLE <= now
                # An unsettled block is stored already expired: used for this answer only.
                self._blocks[h] = (mono + BLOCK_TTL_S if settled else mono - 1.0, routes)
            oldest = now - KEEP
            for h in [h for h in self._blocks if h < oldest]:
                del self._blocks[h]
        return [self._blocks[h][1] for h in blocks]
