"""System metrics of the query API: per-route figures over a window from the per-minute rollup.

A window is read as: the minutes of its partial first and last hours straight from
``system_metrics``, and its whole hours from an in-process cache of per-hour merged rows
(counts, errors by type, DDSketch latency histograms). A whole hour is cached only once it
ended :data:`SETTLE` ago (so the aggregator has had time to roll in late batches) and is
re-read after :data:`HOUR_TTL` (so even later data shows up). A 24-hour window therefore costs
about one hour of minute rows plus a merge in Python, instead of 1,440 minutes of every route.
Percentiles come from the merged histograms (:mod:`.histogram`, relative error <= 1 %).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from . import histogram

SETTLE = timedelta(minutes=10)
HOUR_TTL_S = 3600.0
KEEP_HOURS = 26
"""Cached hours older than this are dropped (the longest window is 24 h)."""

# One row per (bucket, route, method) with totals, and the merged maps flattened to
# (bucket, route, method, kind, key, count) rows: set-based merging in PostgreSQL.
BUCKET_TOTALS_SQL = """
SELECT CASE WHEN $3 THEN date_trunc('hour', minute) ELSE $1 END AS bucket, route, method,
       sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       sum(client_errors)::bigint AS client_errors, max(latency_max_ms) AS max_ms
FROM system_metrics WHERE minute >= $1 AND minute < $2
GROUP BY 1, 2, 3
"""

BUCKET_MAPS_SQL = """
WITH w AS (
    SELECT CASE WHEN $3 THEN date_trunc('hour', minute) ELSE $1 END AS bucket, route, method,
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


async def read_buckets(conn: asyncpg.Connection, start: datetime, end: datetime, *, hourly: bool) -> Buckets:
    """Routes' totals in ``[start, end)``: per UTC hour if ``hourly``, else one bucket keyed ``start``."""
    out: Buckets = {}
    if end <= start:
        return out
    for r in await conn.fetch(BUCKET_TOTALS_SQL, start, end, hourly):
        out.setdefault(r["bucket"], {})[(r["route"], r["method"])] = RouteTotals(
            requests=r["requests"], errors=r["errors"], client_errors=r["client_errors"], max_ms=r["max_ms"]
        )
    for r in await conn.fetch(BUCKET_MAPS_SQL, start, end, hourly):
        totals = out.setdefault(r["bucket"], {}).setdefault((r["route"], r["method"]), RouteTotals())
        target = totals.latency_hist if r["kind"] == "h" else totals.errors_by_type
        target[r["key"]] = target.get(r["key"], 0) + r["n"]
    return out


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _merge(pieces: list[dict[RouteKey, RouteTotals]]) -> dict[RouteKey, RouteTotals]:
    """A new map with every piece added (the pieces are not changed)."""
    merged: dict[RouteKey, RouteTotals] = {}
    for piece in pieces:
        for key, totals in piece.items():
            merged.setdefault(key, RouteTotals()).add(totals)
    return merged


class HourCache:
    """Merged per-route totals of settled whole hours (see the module docstring)."""

    def __init__(self) -> None:
        self._hours: dict[datetime, tuple[float, dict[RouteKey, RouteTotals]]] = {}
        self._spans: dict[tuple[datetime, datetime], tuple[float, dict[RouteKey, RouteTotals]]] = {}

    def clear(self) -> None:
        self._hours.clear()
        self._spans.clear()

    async def window(
        self, conn: asyncpg.Connection, since: datetime, until: datetime
    ) -> dict[RouteKey, RouteTotals]:
        """Every route's totals over ``[since, until)``."""
        first_full = (
            _floor_hour(since) if since == _floor_hour(since) else _floor_hour(since) + timedelta(hours=1)
        )
        last_full_end = _floor_hour(until)
        pieces: list[dict[RouteKey, RouteTotals]] = []
        if first_full >= last_full_end:  # no whole hour inside: minutes only
            pieces.extend((await read_buckets(conn, since, until, hourly=False)).values())
        else:
            pieces.extend((await read_buckets(conn, since, first_full, hourly=False)).values())
            pieces.extend((await read_buckets(conn, last_full_end, until, hourly=False)).values())
            pieces.append(await self._span(conn, first_full, last_full_end, until))
        return _merge(pieces)

    async def _span(
        self, conn: asyncpg.Connection, start: datetime, end: datetime, now: datetime
    ) -> dict[RouteKey, RouteTotals]:
        """Whole hours ``[start, end)`` merged; kept while every hour in it is cached and settled."""
        mono = time.monotonic()
        cached = self._spans.get((start, end))
        if cached is not None and cached[0] > mono:
            return cached[1]
        hours = await self._whole_hours(conn, start, end, now)
        merged = _merge(hours)
        expiry = min(self._hours[h][0] for h in self._hours if start <= h < end)
        self._spans = {(start, end): (expiry, merged)} if expiry > mono else {}
        return merged

    async def _whole_hours(
        self, conn: asyncpg.Connection, start: datetime, end: datetime, now: datetime
    ) -> list[dict[RouteKey, RouteTotals]]:
        mono = time.monotonic()
        hours = []
        hour = start
        while hour < end:
            hours.append(hour)
            hour += timedelta(hours=1)
        missing = [h for h in hours if h not in self._hours or self._hours[h][0] < mono]
        if missing:
            fresh = await read_buckets(conn, missing[0], missing[-1] + timedelta(hours=1), hourly=True)
            for h in missing:
                routes = fresh.get(h, {})
                settled = h + timedelta(hours=1) + SETTLE <= now
                # An unsettled hour is stored already expired: used for this answer only.
                self._hours[h] = (mono + HOUR_TTL_S if settled else mono - 1.0, routes)
            oldest = now - timedelta(hours=KEEP_HOURS)
            for h in [h for h in self._hours if h < oldest]:
                del self._hours[h]
        return [self._hours[h][1] for h in hours]
