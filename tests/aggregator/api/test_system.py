"""System metrics over windows: minutes at the ends + cached blocks and whole hours == all minutes.

The rows are written by the aggregator's own rollup merge (``Rollup.apply``), which keeps the
per-minute and the hourly route rollups; the answer for any window must equal a read of every
minute row of it, merged in SQL here (:func:`_every_minute`: independent of the API's merge), exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from studyin_analytics.aggregator.api.system import BlockCache, RouteTotals, pieces_of
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.mapping import RawRecord, rows_of
from studyin_analytics.aggregator.consumer.rollups import Rollup, setup_connection
from studyin_analytics.aggregator.storage.db import connect

ROUTES = [("/a/{id}", "GET"), ("/b", "POST"), ("/c", "GET")]
SPAN = timedelta(hours=30)


def _requests(now: datetime, rng: random.Random) -> list[RawRecord]:
    """API requests over the last 30 hours, some routes idle in some minutes, a few errors."""
    records: list[RawRecord] = []
    for m in range(int(SPAN.total_seconds()) // 60):
        minute = now - timedelta(minutes=m + 1)
        for route, method in ROUTES:
            if rng.random() < 0.3:
                continue
            for _ in range(rng.randint(1, 4)):
                status = rng.choice([200, 200, 200, 404, 500])
                properties: dict[str, Any] = {
                    "route": route,
                    "method": method,
                    "status_code": status,
                    "duration_ms": rng.lognormvariate(2, 1),
                }
                if status == 500:
                    properties["error_type"] = rng.choice(["TimeoutError", "KeyError"])
                at = minute + timedelta(seconds=rng.uniform(0, 59.999))
                records.append((uuid.uuid4(), at, "api_request", None, None, json.dumps(properties)))
    return records


async def _load(settings: Settings, records: list[RawRecord], rng: random.Random) -> None:
    """Through the aggregator's merge, in batches of random sizes and order (many upserts per key)."""
    rng.shuffle(records)
    conn = await connect(settings)
    try:
        await setup_connection(conn)
        at = 0
        while at < len(records):
            size = rng.randint(1, 3000)
            rollup = Rollup()
            rollup.add(rows_of(records[at : at + size]))
            async with conn.transaction():
                await rollup.apply(conn)
            at += size
    finally:
        await conn.close()


async def _every_minute(conn: Any, since: datetime, until: datetime) -> dict[Any, RouteTotals]:
    """Every route's totals over ``[since, until)`` from every minute row, merged by PostgreSQL."""
    out: dict[Any, RouteTotals] = {}
    for r in await conn.fetch(
        "SELECT route, method, sum(requests)::bigint AS requests, sum(errors)::bigint AS errors, "
        "sum(client_errors)::bigint AS client_errors, max(latency_max_ms) AS max_ms, "
        "count_map_sum(latency_hist)::text AS hist, count_map_sum(errors_by_type)::text AS by_type "
        "FROM system_metrics WHERE minute >= $1 AND minute < $2 GROUP BY 1, 2",
        since,
        until,
    ):
        out[(r["route"], r["method"])] = RouteTotals(
            r["requests"],
            r["errors"],
            r["client_errors"],
            r["max_ms"],
            json.loads(r["by_type"]),
            json.loads(r["hist"]),
        )
    return out


def _same(got: dict[Any, RouteTotals], expected: dict[Any, RouteTotals]) -> None:
    assert set(got) == set(expected)
    for key, totals in expected.items():
        mine = got[key]
        assert (mine.requests, mine.errors, mine.client_errors, mine.max_ms) == (
            totals.requests,
            totals.errors,
            totals.client_errors,
            totals.max_ms,
        )
        assert mine.errors_by_type == totals.errors_by_type
        assert mine.latency_hist == totals.latency_hist


@pytest.mark.unit
def test_pieces_cover_the_span_with_whole_hours_between_blocks() -> None:
    start = datetime(2026, 12, 1, 10, 40, tzinfo=UTC)
    pieces = pieces_of(start, datetime(2026, 12, 1, 13, 20, tzinfo=UTC))
    assert [(p.strftime("%H:%M"), int(w.total_seconds()) // 60) for p, w in pieces] == [
        ("10:40", 10),
        ("10:50", 10),
        ("11:00", 60),
        ("12:00", 60),
        ("13:00", 10),
        ("13:10", 10),
    ]


async def test_hourly_rows_are_the_sum_of_their_minutes_and_windows_match_every_minute(
    migrated: Settings,
) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    records = _requests(now, rng)
    await _load(migrated, records, rng)
    conn = await connect(migrated)
    try:
        differing = await conn.fetch(
            """
            SELECT * FROM (
                SELECT date_trunc('hour', minute) AS hour, route, method, sum(requests) AS requests,
                       sum(errors) AS errors, sum(client_errors) AS client_errors,
                       count_map_sum(errors_by_type) AS by_type, min(latency_min_ms) AS mn,
                       max(latency_max_ms) AS mx, count_map_sum(latency_hist) AS hist
                FROM system_metrics GROUP BY 1, 2, 3) m
            FULL JOIN system_metrics_hourly h USING (hour, route, method)
            WHERE (m.requests, m.errors, m.client_errors, m.by_type, m.mn, m.mx, m.hist)
                  IS DISTINCT FROM (h.requests, h.errors, h.client_errors, h.errors_by_type,
                                    h.latency_min_ms, h.latency_max_ms, h.latency_hist)
            """
        )
        assert differing == []
        assert await conn.fetchval("SELECT count(*) FROM system_metrics_hourly") >= 30 * len(ROUTES)
        cache = BlockCache()
        until = now + timedelta(seconds=30)
        for window in (timedelta(minutes=5), timedelta(hours=1), timedelta(hours=6), timedelta(hours=24)):
            since = until - window
            for _attempt in range(2):  # the second read takes whole pieces from the cache
                got = await cache.window(conn, since, until)
                _same(got, await _every_minute(conn, since, until))
        assert sum(t.requests for t in got.values()) > 1000
    finally:
        await conn.close()


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    end_s=st.integers(0, int(SPAN.total_seconds())),
    length_s=st.integers(1, int(SPAN.total_seconds())),
    reuse=st.booleans(),
)
def test_any_window_equals_the_minute_only_computation(
    migrated: Settings, loaded: dict[str, Any], end_s: int, length_s: int, reuse: bool
) -> None:
    """Random windows (any second, any length up to 30 h), from a fresh or a reused cache."""

    async def check() -> None:
        if "now" not in loaded:
            rng = random.Random(11)
            loaded["now"] = datetime.now(UTC).replace(second=0, microsecond=0)
            await _load(migrated, _requests(loaded["now"], rng), rng)
        until = loaded["now"] + timedelta(minutes=5) - timedelta(seconds=end_s)
        since = until - timedelta(seconds=length_s)
        cache = loaded.setdefault("cache", BlockCache()) if reuse else BlockCache()
        conn = await connect(migrated)
        try:
            got = await cache.window(conn, since, until)
            _same(got, await _every_minute(conn, since, until))
        finally:
            await conn.close()

    asyncio.run(check())
