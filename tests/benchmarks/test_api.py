"""The API benchmark runs end to end on a tiny data set and reports a row per GET."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest
from rich.progress import Progress

from studyin_analytics.benchmarks import api as api_bench
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext
from studyin_analytics.instrumentation.settings import Settings


async def test_api_bench_quick(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_bench, "QUICK_EVENTS", 5_000)
    monkeypatch.setattr(api_bench, "QUICK_USERS", 50)
    monkeypatch.setattr(api_bench, "QUICK_REQUESTS", 5)
    monkeypatch.setattr(api_bench, "WARMUP_REQUESTS", 1)
    assert REGISTRY["api"] is api_bench.api_latency
    ctx = BenchContext(settings=settings, quick=True, progress=Progress(disable=True))
    try:
        rows = await api_bench.api_latency(ctx)
        assert len(ctx.isolated) == 1
        conn = await asyncpg.connect(settings.postgres_url)
        try:
            schema = ctx.isolated[0].postgres_schema
            raw = await conn.fetchval(f'SELECT count(*) FROM "{schema}".analytics_events')
            daily = await conn.fetchval(f'SELECT sum(events) FROM "{schema}".daily_activity_summary')
            minutes = await conn.fetchval(f'SELECT sum(requests) FROM "{schema}".system_metrics')
            api_rows = await conn.fetchval(
                f"SELECT count(*) FROM \"{schema}\".analytics_events WHERE event_type = 'api_request'"
            )
        finally:
            await conn.close()
    finally:
        conn = await asyncpg.connect(settings.postgres_url)
        try:
            for isolated in ctx.isolated:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{isolated.postgres_schema}" CASCADE')
        finally:
            await conn.close()
    assert raw == 5_000
    assert daily == 5_000  # every raw event is in the derived rollups
    assert minutes == api_rows > 0
    latency = [r for r in rows if r.unit == "ms"]
    assert len(latency) == len(api_bench.probes(date.today()))
    for row in latency:
        assert row.value > 0 and row.baseline is not None and row.baseline > 0
        assert row.target == "<= 25 ms" and row.met is not None
