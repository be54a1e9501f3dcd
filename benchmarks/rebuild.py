"""Rollup rebuild: raw events per second recomputed by ``rollups rebuild``, against a plain re-aggregation.

Same run, same raw events (sessions and API spans of the aggregator benchmark, ingested once by an
in-process aggregator, not timed). The **value** is :func:`~..aggregator.consumer.rebuild.rebuild`
over every day of the events: per day the exclusive rollup lock, the raw events read and counted,
the stored sessions read, the day's rows of the five rebuildable tables deleted and written, the
progress row updated. The **baseline** is a plain re-aggregation of the same events: read the same
raw rows, count them with the same :class:`~..aggregator.consumer.rollups.Rollup` and merge it
once into the empty rollup tables of a fresh schema, as the aggregator would (no lock, no delete,
no sessions read back). The ratio is what the handover and the replace-a-day design cost.

Target: at least 0.5x the plain re-aggregation.

Run alone: ``studyin-analytics bench --only rebuild [--quick]``.
"""

from __future__ import annotations

import random
import time

import asyncpg
import redis.asyncio as aioredis

from ..aggregator.cli.settings import Settings, require
from ..aggregator.consumer.mapping import RAW_COLUMNS, rows_of
from ..aggregator.consumer.rebuild import rebuild
from ..aggregator.consumer.rollups import Rollup, setup_connection
from ..aggregator.consumer.service import Aggregator
from ..aggregator.storage.db import connect
from ..aggregator.storage.schema import existing_partitions
from ..exporter.bus import stream_keys
from .aggregator import entries_of, make_spans, users_of
from .framework import BenchContext, Measurement, at_least, bench, median

TARGET_RATIO = 0.5
FETCH_ROWS = 20_000


async def _ingest(settings: Settings, events: int, users: int) -> int:
    rng = random.Random(20261203)
    spans = make_spans(rng, users_of(settings, users), events)
    client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
    try:
        async with client.pipeline(transaction=False) as pipe:
            for fields in entries_of(spans):
                pipe.xadd(stream_keys(settings)[0], fields)
            await pipe.execute()
    finally:
        await client.aclose()
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=600)
    return totals.events_inserted


async def _reaggregate_rate(source: Settings, target: Settings) -> float:
    """Read every raw event of ``source``, roll them up once into ``target``'s empty tables."""
    read = await connect(source)
    write = await connect(target)
    try:
        await read.reset_type_codec("jsonb", schema="pg_catalog")
        await setup_connection(write)
        started = time.perf_counter()
        rollup = Rollup()
        events = 0
        async with read.transaction():
            cursor = await read.cursor(f"SELECT {', '.join(RAW_COLUMNS)} FROM analytics_events")
            while chunk := await cursor.fetch(FETCH_ROWS):
                rollup.add(rows_of(chunk))
                events += len(chunk)
        async with write.transaction():
            await rollup.apply(write)
        return events / (time.perf_counter() - started)
    finally:
        await read.close()
        await write.close()


async def _rebuild_rate(settings: Settings) -> tuple[float, int, float]:
    conn: asyncpg.Connection = await connect(settings)
    try:
        first = min(await existing_partitions(conn))
    finally:
        await conn.close()
    report = await rebuild(settings, first)
    return report.events_per_s, report.events, report.longest_lock_s


@bench("rebuild")
async def rebuild_bench(ctx: BenchContext) -> list[Measurement]:
    events = ctx.scale(200_000, 10_000)
    users = ctx.scale(2_000, 200)
    rebuilt: list[float] = []
    plain: list[float] = []
    locks: list[float] = []
    async with ctx.task("rollup rebuild vs plain re-aggregation", total=ctx.repeat_count) as task:
        source = await ctx.migrated_settings("rebuild source")
        stored = await _ingest(source, events, users)
        for _ in range(ctx.repeat_count):
            target = await ctx.migrated_settings("rebuild plain")
            plain.append(await _reaggregate_rate(source, target))
            rate, counted, lock_s = await _rebuild_rate(source)
            locks.append(lock_s)
            if counted != stored:
                raise RuntimeError(f"the rebuild read {counted} raw events, {stored} are stored")
            rebuilt.append(rate)
            ctx.advance(task)
    value, baseline = median(rebuilt), median(plain)
    target_text, met = at_least(value / baseline, TARGET_RATIO, "x the plain re-aggregation")
    return [
        Measurement(
            "rollup rebuild (every day of raw events, aggregators' lock taken per day)",
            value,
            "events/s",
            baseline=baseline,
            baseline_name="plain re-aggregation of the same raw events into empty tables",
            target=target_text,
            met=met,
            notes=f"{stored:,} events of {users} users; live merges waited at most "
            f"{max(locks) * 1000:.0f} ms (the longest locked step of a day)",
            samples=rebuilt,
        )
    ]
