"""Tiny fake benchmarks for the bench runner's tests: one writes to its isolated schema and keys
(the settings it was handed are appended to ``SEEN``), one raises."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg
import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import framework
from studyin_analytics.benchmarks.framework import BenchContext, Measurement, bench

SEEN: list[Settings] = []


@contextlib.contextmanager
def registered_fakes() -> Iterator[list[str]]:
    """Two registered fakes: one writes to its isolated schema and keys, one raises."""

    @bench("fake_ok")
    async def fake_ok(ctx: BenchContext) -> list[Measurement]:
        settings = ctx.isolated_settings("fake ok")
        SEEN.append(settings)
        client = redis.Redis.from_url(settings.redis_url or "")
        try:
            client.set(f"{settings.stream_prefix}:marker", b"1")
        finally:
            client.close()
        conn = await asyncpg.connect(settings.postgres_url)
        try:
            await conn.execute(f'CREATE SCHEMA "{settings.postgres_schema}"')
        finally:
            await conn.close()
        value = framework.median([float(n) for n in range(ctx.repeat_count + 2)])
        target, met = framework.at_least(value, 1.0, "items/s")
        return [
            Measurement(
                "fake throughput",
                value,
                "items/s",
                baseline=2.0,
                baseline_name="twice",
                target=target,
                met=met,
            ),
            Measurement("fake latency p99", 3.5, "ms", target="<= 5 ms", met=True),
        ]

    @bench("fake_fail")
    async def fake_fail(ctx: BenchContext) -> list[Measurement]:
        ctx.isolated_settings("fake fail")
        raise RuntimeError("deliberate failure")

    SEEN.clear()
    try:
        yield ["fake_ok", "fake_fail"]
    finally:
        framework.REGISTRY.pop("fake_ok", None)
        framework.REGISTRY.pop("fake_fail", None)
