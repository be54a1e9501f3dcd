"""Aggregator scale-out: throughput of 1, 2 and 4 ``studyin-analytics aggregator`` processes.

The same pre-filled bus (the throughput workload of :mod:`.aggregator`, spread over
``SHARDS`` stream keys by user hash as the exporter does) is consumed by N real aggregator
processes in one consumer group, each with its own consumer name, into a fresh schema. The
processes are started and connected before the clock starts: the group is created at the end
of the streams, and once every member has joined it is moved back to the start
(``XGROUP SETID ... 0``), so the measured time is consuming only, from that moment until the
group has delivered and acknowledged every entry. Value: events/s for N workers; baseline:
the one-worker rate of the same run, so the ratio is the speed-up.

Two ways to share: every member reading every shard (the default), and each member reading
its own shards (``STUDYIN_ANALYTICS_CONSUMER_SHARDS=i/N``). Members of the first kind
aggregate the same learners at the same time, so their transactions queue on each other's
rollup rows; members of the second kind touch disjoint learners.

On the 2-core machine of the notes, the aggregator process and its PostgreSQL backend already
keep both cores busy with one worker, so the curve is expected to flatten early: the figure
shows how much the second core and row-lock contention between members leave.

The second bench, ``aggregator_schema_variant``, runs one such process on the Citus-ready schema
variant (``STUDYIN_ANALYTICS_POSTGRES_SCHEMA_VARIANT=citus``: raw events keyed by learner,
learner-less events in their own table) against the plain schema, on plain PostgreSQL, the two
alternating in the same run: the cost of the variant's keys on one machine.

Run alone: ``studyin-analytics bench --only aggregator_scaling [--quick]`` (or
``--only aggregator_schema_variant``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..aggregator.cli.settings import Settings, require
from ..aggregator.consumer.mapping import rows_from_span
from ..aggregator.storage.schema import migrate
from ..aggregator.storage.variant import LEARNERLESS_TABLE, Variant
from ..exporter.bus import group_lag, shard_index, stream_keys
from ..exporter.wire import SpanRecord
from .aggregator import entries_of, make_spans, users_of
from .framework import BenchContext, Measurement, bench

WORKER_COUNTS = (1, 2, 4)
SHARDS = 4
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 900.0


def _entries_by_stream(settings: Settings, spans: Sequence[SpanRecord]) -> dict[str, list[dict[Any, Any]]]:
    """Wire entries per stream key, each span on the shard of its user (as the exporter shards)."""
    keys = stream_keys(settings)
    by_shard: list[list[SpanRecord]] = [[] for _ in keys]
    for span in spans:
        user = span.attributes.get("user.hash")
        by_shard[shard_index(str(user) if user else span.trace_id, len(keys))].append(span)
    return {key: entries_of(shard_spans) for key, shard_spans in zip(keys, by_shard, strict=True)}


async def _fill(client: aioredis.Redis, settings: Settings, entries: dict[str, list[dict[Any, Any]]]) -> None:
    for stream, fields_list in entries.items():
        for i in range(0, len(fields_list), 200):
            async with client.pipeline(transaction=False) as pipe:
                for fields in fields_list[i : i + 200]:
                    pipe.xadd(stream, fields)
                await pipe.execute()
        # At the end of the stream: the members join without being handed anything yet.
        try:
            await client.xgroup_create(stream, settings.consumer_group, id="$")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _worker_env(settings: Settings) -> dict[str, str]:
    require(settings.redis_url, "redis_url")
    require(settings.postgres_url, "postgres_url")
    return {**os.environ, **settings.environment(), "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0"}


async def _members(client: aioredis.Redis, settings: Settings) -> set[str]:
    """Consumer names that joined the group on every stream."""
    joined: set[str] | None = None
    for stream in stream_keys(settings):
        names = {
            (c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"]))
            for c in await client.xinfo_consumers(stream, settings.consumer_group)
        }
        joined = names if joined is None else joined & names
    return joined or set()


async def _drained(client: aioredis.Redis, settings: Settings) -> bool:
    """Every entry of every stream delivered and acknowledged."""
    for stream in stream_keys(settings):
        lag = await group_lag(client, stream, settings.consumer_group)
        if lag is not None and lag.behind:
            return False
    return True


async def _rate(
    settings: Settings, workers: int, entries: dict[str, list[dict[Any, Any]]], events: int, own_shards: bool
) -> float:
    client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
    procs: list[asyncio.subprocess.Process] = []
    try:
        await _fill(client, settings, entries)
        names = [f"bench-scale-{workers}-{i}" for i in range(workers)]
        for index, name in enumerate(names):
            env = _worker_env(settings)
            if own_shards:
                env["STUDYIN_ANALYTICS_CONSUMER_SHARDS"] = f"{index}/{workers}"
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "studyin_analytics.aggregator.cli",
                    "aggregator",
                    "--consumer-name",
                    name,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not set(names) <= await _members(client, settings):
            if time.monotonic() > deadline or any(p.returncode is not None for p in procs):
                raise RuntimeError(f"{workers} aggregator processes did not all join the group")
            await asyncio.sleep(0.1)
        started = time.perf_counter()
        for stream in stream_keys(settings):
            await client.xgroup_setid(stream, settings.consumer_group, id="0")
        while not await _drained(client, settings):
            if time.perf_counter() - started > DRAIN_TIMEOUT_S:
                raise RuntimeError(f"{workers} workers did not drain the bus in {DRAIN_TIMEOUT_S:.0f} s")
            if any(p.returncode is not None for p in procs):
                raise RuntimeError("an aggregator process exited during the run")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await client.aclose()
    conn = await asyncpg.connect(
        require(settings.postgres_url, "postgres_url"),
        server_settings={"search_path": f"{settings.postgres_schema},public"},
    )
    try:
        stored = await conn.fetchval("SELECT count(*) FROM analytics_events")
        if await conn.fetchval("SELECT to_regclass($1)", LEARNERLESS_TABLE) is not None:  # citus variant
            stored += await conn.fetchval(f"SELECT count(*) FROM {LEARNERLESS_TABLE}")
    finally:
        await conn.close()
    if stored != events:
        raise RuntimeError(f"{workers} workers stored {stored} events, expected {events}")
    return events / elapsed


@bench("aggregator_scaling")
async def scaling(ctx: BenchContext) -> list[Measurement]:
    """Throughput of 1, 2 and 4 aggregator processes sharing one consumer group."""
    events = ctx.scale(200_000, 20_000)
    rng = random.Random(20261125)
    users = users_of(ctx.settings, ctx.scale(5_000, 500))
    spans = make_spans(rng, users, events)
    rows = sum(len(rows_from_span(span)) for span in spans)
    # (workers, each member on its own shards): one worker reads every shard either way.
    configs = [(1, False)] + [(n, own) for n in WORKER_COUNTS if n > 1 for own in (False, True)]
    rates: dict[tuple[int, bool], list[float]] = {config: [] for config in configs}
    async with ctx.task(
        "aggregator scaling (1, 2, 4 workers)", total=ctx.repeat_count * len(configs)
    ) as task:
        for _ in range(ctx.repeat_count):
            for workers, own in configs:
                settings = (await ctx.migrated_settings(f"agg scaling {workers}")).with_overrides(
                    stream_shards=SHARDS
                )
                entries = _entries_by_stream(settings, spans)
                rates[workers, own].append(await _rate(settings, workers, entries, rows, own))
                ctx.advance(task)
    medians = {config: sorted(r)[len(r) // 2] for config, r in rates.items()}
    cores = os.cpu_count() or 1

    def label(workers: int, own: bool) -> str:
        if workers == 1:
            return "aggregator scaling: 1 worker process"
        how = "each on its own shards (consumer_shards i/N)" if own else "all reading every shard"
        return f"aggregator scaling: {workers} worker processes, {how}"

    return [
        Measurement(
            label(workers, own),
            medians[workers, own],
            "events/s",
            baseline=medians[1, False],
            baseline_name="1 worker, same run",
            notes=f"{rows:,} events on {SHARDS} shards, {cores} CPU cores; ratio = speed-up",
            samples=rates[workers, own],
        )
        for workers, own in configs
    ]


@bench("aggregator_schema_variant")
async def schema_variant(ctx: BenchContext) -> list[Measurement]:
    """Throughput of one aggregator process on the citus schema variant against the plain schema."""
    events = ctx.scale(200_000, 20_000)
    rng = random.Random(20261203)
    users = users_of(ctx.settings, ctx.scale(5_000, 500))
    spans = make_spans(rng, users, events)
    rows = sum(len(rows_from_span(span)) for span in spans)
    variants: tuple[Variant, Variant] = ("plain", "citus")
    rates: dict[Variant, list[float]] = {variant: [] for variant in variants}
    async with ctx.task("aggregator on the citus schema variant", total=ctx.repeat_count * 2) as task:
        for repeat in range(ctx.repeat_count):
            for variant in variants if repeat % 2 == 0 else variants[::-1]:  # alternate against drift
                settings = ctx.isolated_settings(f"agg variant {variant}").with_overrides(
                    stream_shards=SHARDS, postgres_schema_variant=variant
                )
                await asyncio.to_thread(migrate, settings)
                entries = _entries_by_stream(settings, spans)
                rates[variant].append(await _rate(settings, 1, entries, rows, False))
                ctx.advance(task)
    medians = {variant: sorted(r)[len(r) // 2] for variant, r in rates.items()}
    return [
        Measurement(
            "aggregator on the citus schema variant (plain PostgreSQL, 1 worker process)",
            medians["citus"],
            "events/s",
            baseline=medians["plain"],
            baseline_name="plain schema, same run",
            notes=f"{rows:,} events; keys (user_hash, event_id, occurred_at), learner-less events apart",
            samples=rates["citus"],
        )
    ]
