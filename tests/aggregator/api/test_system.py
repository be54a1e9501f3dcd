"""System metrics over long windows: partial hours from minutes + cached whole hours == all minutes."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from studyin_analytics.aggregator.api.system import BlockCache, read_buckets
from studyin_analytics.aggregator.consumer import histogram
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.instrumentation.settings import Settings

ROUTES = [("/a/{id}", "GET"), ("/b", "POST"), ("/c", "GET")]


async def test_block_cache_window_equals_a_read_of_every_minute(migrated: Settings) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rows = []
    for m in range(30 * 60):  # 30 hours of minutes, some routes idle in some minutes
        minute = now - timedelta(minutes=m)
        for route, method in ROUTES:
            if rng.random() < 0.3:
                continue
            hist: dict[str, int] = {}
            values = [rng.lognormvariate(2, 1) for _ in range(rng.randint(1, 5))]
            for value in values:
                histogram.add(hist, value)
            errors = {"TimeoutError": 1} if rng.random() < 0.1 else {}
            rows.append(
                (minute, route, method, len(values), sum(errors.values()), 0, json.dumps(errors), sum(values),
                 min(values), max(values), json.dumps(hist))
            )  # fmt: skip
    conn = await connect(migrated)
    try:
        await conn.executemany(
            """
            INSERT INTO system_metrics (minute, route, method, requests, errors, client_errors,
                errors_by_type, latency_sum_ms, latency_min_ms, latency_max_ms, latency_hist)
            VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10, $11::text::jsonb)
            """,
            rows,
        )
        cache = BlockCache()
        until = now + timedelta(seconds=30)
        for window in (timedelta(minutes=5), timedelta(hours=1), timedelta(hours=6), timedelta(hours=24)):
            since = until - window
            for attempt in range(2):  # the second read takes whole hours from the cache
                got = await cache.window(conn, since, until)
                expected = (await read_buckets(conn, since, until, blocks=False)).get(since, {})
                assert set(got) == set(expected), (window, attempt)
                for key, totals in expected.items():
                    mine = got[key]
                    assert (mine.requests, mine.errors, mine.max_ms) == (
                        totals.requests,
                        totals.errors,
                        totals.max_ms,
                    )
                    assert mine.errors_by_type == totals.errors_by_type
                    assert mine.latency_hist == totals.latency_hist
                    assert mine.quantile(0.95) == totals.quantile(0.95)
        assert sum(t.requests for t in got.values()) > 1000
    finally:
        await conn.close()
