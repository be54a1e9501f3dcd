"""Aggregator: throughput to committed rollups, freshness, memory.

* **throughput**: a stream pre-filled with attribute-rich spans (learning sessions with
  their events, HTTP server spans) in the real wire format is consumed by an in-process
  :class:`Aggregator` until the group has no lag: events per second from the first read to
  the last commit, raw rows and every rollup included. Baseline, same run, same rows: a bare
  ``COPY`` of the same raw event rows into the same ``analytics_events`` table (fresh
  schema, same indexes), in 10k-row transactions. Targets (issue 5): >= 100k events/s and
  >= 0.6x the bare COPY.
* **freshness**: a producer offers 5k events/s (one entry of 50 events every 10 ms, the
  span end time stamped just before ``XADD``) to a running aggregator; for every entry, the
  time from span end to the commit of its rollups. Targets: p50 <= 100 ms, p99 <= 500 ms.
* **memory**: a ``studyin-analytics aggregator`` process under a sustained offered load;
  RSS sampled every 0.5 s. Value: the peak RSS; baseline: the RSS right after start-up;
  target < 200 MB and flat (the notes give the growth between the first and last quarter).

Run alone: ``studyin-analytics bench --only aggregator [--quick] [--repeats N]`` (servers from
``STUDYIN_ANALYTICS_*``; embedded ones when unset).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import psutil
import redis.asyncio as aioredis

from ..aggregator.cli.settings import Settings, require
from ..aggregator.consumer.mapping import RAW_COLUMNS, EventRow, raw_records, rows_from_span
from ..aggregator.consumer.service import Aggregator, tuned_gc
from ..aggregator.storage.schema import ensure_partitions
from ..exporter import wire
from ..exporter.bus import group_lag, stream_keys
from ..exporter.wire import EventRecord, SpanRecord
from ..instrumentation.privacy import Pseudonymizer
from .aggregator_copy import copy_encoding
from .framework import BenchContext, Measurement, at_least, at_most, bench, median

TARGET_EVENTS_PER_S = 100_000.0
TARGET_COPY_RATIO = 0.6
TARGET_FRESH_P50_MS = 100.0
TARGET_FRESH_P99_MS = 500.0
TARGET_RSS_MB = 200.0
OFFERED_EVENTS_PER_S = 5_000
EVENTS_PER_FRESH_ENTRY = 50
COPY_CHUNK = 10_000
SPANS_PER_ENTRY = 40
ROUTES = ("/materials/{id}", "/sessions", "/sessions/{id}/end", "/me", "/coach/ask")
MATERIALS = ("cardio-101", "ecg-basics", "renal-qbank", "pharm-cards", "neuro-cases")


# --- workload --------------------------------------------------------------------------------------


def _session_span(rng: random.Random, user: str, end_ns: int) -> SpanRecord:
    start_ns = end_ns - rng.randrange(60, 1800) * 1_000_000_000
    sid = str(uuid.UUID(int=rng.getrandbits(128)))
    events = [EventRecord("studyin.session_start", start_ns, {"studyin.session.id": sid})]
    for k in range(3):
        material = rng.choice(MATERIALS)
        at = start_ns + (k + 1) * 1_000_000_000
        events.append(
            EventRecord(
                "studyin.material_view",
                at,
                {
                    "studyin.material.id": material,
                    "studyin.material.type": "video",
                    "studyin.session.id": sid,
                },
            )
        )
    events.append(
        EventRecord(
            "studyin.xp_awarded",
            start_ns + 5_000_000_000,
            {"studyin.xp.amount": 10, "studyin.xp.reason": "x"},
        )
    )
    events.append(
        EventRecord(
            "studyin.ai_coach_interaction",
            start_ns + 6_000_000_000,
            {
                "studyin.ai.interaction_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "studyin.ai.latency_ms": rng.lognormvariate(6, 0.5),
                "studyin.ai.tokens_in": 120,
                "studyin.ai.tokens_out": 300,
                "studyin.ai.model": "coach-small",
                "studyin.ai.topic_category": "cardiology",
            },
        )
    )
    events.append(
        EventRecord(
            "studyin.session_end",
            end_ns,
            {
                "studyin.session.id": sid,
                "studyin.session.duration_s": (end_ns - start_ns) / 1e9,
                "studyin.session.xp_earned": 10,
                "studyin.session.materials_touched": ["cardio-101"],
                "studyin.session.end_reason": "completed",
            },
        )
    )
    return SpanRecord(
        rng.randbytes(16),
        rng.randbytes(8),
        None,
        "studyin.learning_session",
        wire.SPAN_KIND_INTERNAL,
        start_ns,
        end_ns,
        0,
        {"user.hash": user, "studyin.session.id": sid},
        events,
        {"service.name": "bench"},
    )


def _api_span(rng: random.Random, user: str, end_ns: int) -> SpanRecord:
    route = rng.choice(ROUTES)
    status = rng.choice((200, 200, 200, 201, 404, 500))
    attrs: dict[str, Any] = {
        "http.route": route,
        "http.request.method": "GET",
        "http.response.status_code": status,
        "user.hash": user,
    }
    if status == 500:
        attrs["error.type"] = "RuntimeError"
    duration = int(rng.lognormvariate(2.5, 0.8) * 1_000_000)
    return SpanRecord(
        rng.randbytes(16),
        rng.randbytes(8),
        None,
        f"GET {route}",
        wire.SPAN_KIND_SERVER,
        end_ns - duration,
        end_ns,
        0,
        attrs,
        [],
        {"service.name": "bench"},
    )


def make_spans(
    rng: random.Random, users: list[str], events: int, end_ns: int | None = None
) -> list[SpanRecord]:
    """Spans carrying about ``events`` events (sessions of 7 events and API spans, 1:3)."""
    spans: list[SpanRecord] = []
    count = 0
    while count < events:
        user = rng.choice(users)
        end = end_ns if end_ns is not None else time.time_ns() - rng.randrange(0, 3600) * 1_000_000_000
        if rng.random() < 0.25:
            spans.append(_session_span(rng, user, end))
            count += 7
        else:
            spans.append(_api_span(rng, user, end))
            count += 1
    return spans


def entries_of(spans: Sequence[SpanRecord]) -> list[dict[Any, Any]]:
    out = []
    for i in range(0, len(spans), SPANS_PER_ENTRY):
        chunk = spans[i : i + SPANS_PER_ENTRY]
        out.append(wire.entry_fields(wire.encode_records(chunk), len(chunk)))
    return out


def users_of(settings: Settings, count: int) -> list[str]:
    pseudonymizer = Pseudonymizer.from_settings(settings)
    return [pseudonymizer.pseudonymize(f"bench-user-{i}") for i in range(count)]


async def _push(settings: Settings, entries: Sequence[dict[Any, Any]]) -> None:
    client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
    stream = stream_keys(settings)[0]
    try:
        for i in range(0, len(entries), 200):
            async with client.pipeline(transaction=False) as pipe:
                for fields in entries[i : i + 200]:
                    pipe.xadd(stream, fields)
                await pipe.execute()
    finally:
        await client.aclose()


# --- throughput ----------------------------------------------------------------------------------


async def _aggregate_rate(
    settings: Settings, entries: Sequence[dict[Any, Any]], events: int
) -> tuple[float, int]:
    """Events per second draining the pre-filled stream, and the transactions it took."""
    await _push(settings, entries)
    transactions: list[int] = []
    async with Aggregator(settings) as aggregator:
        aggregator.on_transaction = lambda rows, _inserted, _seconds: transactions.append(rows)
        with tuned_gc():  # as the aggregator command runs
            started = time.perf_counter()
            totals = await aggregator.drain(timeout_s=600)
            elapsed = time.perf_counter() - started
    if totals.events_inserted != events:
        raise RuntimeError(f"aggregated {totals.events_inserted} events, expected {events}")
    return events / elapsed, len(transactions)


async def _copy_rate(settings: Settings, rows: Sequence[EventRow]) -> float:
    # A plain connection: the binary COPY needs asyncpg's own jsonb codec (text in, binary out).
    conn = await asyncpg.connect(
        require(settings.postgres_url, "postgres_url"),
        server_settings={"search_path": f"{settings.postgres_schema},public"},
    )
    try:
        await ensure_partitions(conn, {r.occurred_at.date() for r in rows}, set())
        records = raw_records(rows)
        started = time.perf_counter()
        for i in range(0, len(records), COPY_CHUNK):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "analytics_events", records=records[i : i + COPY_CHUNK], columns=RAW_COLUMNS
                )
        elapsed = time.perf_counter() - started
        count = await conn.fetchval("SELECT count(*) FROM analytics_events")
        if count != len(rows):
            raise RuntimeError(f"COPY stored {count} rows, expected {len(rows)}")
    finally:
        await conn.close()
    return len(rows) / elapsed


async def throughput(ctx: BenchContext) -> list[Measurement]:
    # Enough events for several rounds (a round commits every ~2 s under a backlog): sustained,
    # not one transaction's best case.
    events = ctx.scale(600_000, 20_000)
    rng = random.Random(20261125)
    base = ctx.settings
    users = users_of(base, ctx.scale(5_000, 500))
    spans = make_spans(rng, users, events)
    entries = entries_of(spans)
    rows = [row for span in spans for row in rows_from_span(span)]
    agg_samples: list[float] = []
    copy_samples: list[float] = []
    async with ctx.task("aggregator throughput vs bare COPY", total=ctx.repeat_count) as task:
        for _ in range(ctx.repeat_count):
            copy_settings = await ctx.migrated_settings("agg copy")
            copy_samples.append(await _copy_rate(copy_settings, rows))
            # Default settings, as deployed: reads sized by TARGET_EVENTS_PER_BATCH.
            agg_settings = await ctx.migrated_settings("agg throughput")
            rate, transactions = await _aggregate_rate(agg_settings, entries, len(rows))
            agg_samples.append(rate)
            ctx.advance(task)
    value, baseline = median(agg_samples), median(copy_samples)
    target, met = at_least(value, TARGET_EVENTS_PER_S, "events/s")
    ratio_ok = value / baseline >= TARGET_COPY_RATIO
    return [
        Measurement(
            "aggregator throughput (pre-filled stream -> committed rollups)",
            value,
            "events/s",
            baseline=baseline,
            baseline_name="bare COPY of the same raw rows",
            target=f"{target} and >= {TARGET_COPY_RATIO}x COPY",
            met=met and ratio_ok,
            notes=f"{len(rows):,} events, {len(entries)} entries, {len(users)} users, "
            f"{transactions} transactions; ratio target "
            f"{'met' if ratio_ok else 'NOT met'}",
            samples=agg_samples,
        )
    ]


# --- freshness -----------------------------------------------------------------------------------


async def freshness(ctx: BenchContext) -> list[Measurement]:
    seconds = ctx.scale(20, 5)
    settings = (await ctx.migrated_settings("agg freshness")).with_overrides(batch_size=50)
    rng = random.Random(7)
    users = users_of(settings, 1000)
    span_end: dict[bytes, int] = {}
    latencies_ms: list[float] = []

    def committed(_stream: str, ids: list[bytes]) -> None:
        now = time.time_ns()
        for entry_id in ids:
            end = span_end.pop(entry_id, None)
            if end is not None:
                latencies_ms.append((now - end) / 1e6)

    client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
    stream = stream_keys(settings)[0]
    stop = asyncio.Event()
    interval = EVENTS_PER_FRESH_ENTRY / OFFERED_EVENTS_PER_S
    async with Aggregator(settings) as aggregator:
        aggregator.on_committed = committed
        consumer = asyncio.create_task(aggregator.run(stop))
        try:
            async with ctx.task("aggregator freshness at 5k events/s", total=seconds) as task:
                started = time.perf_counter()
                sent = 0
                while time.perf_counter() - started < seconds:
                    end_ns = time.time_ns()
                    spans = make_spans(rng, users, EVENTS_PER_FRESH_ENTRY, end_ns=end_ns)
                    fields = wire.entry_fields(wire.encode_records(spans), len(spans))
                    entry_id: Any = await client.xadd(stream, fields)
                    span_end[entry_id] = end_ns
                    sent += 1
                    next_at = started + sent * interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    if sent % int(1 / interval) == 0:
                        ctx.advance(task)
                deadline = time.perf_counter() + 30
                while span_end and time.perf_counter() < deadline:  # noqa: ASYNC110 - bounded wait
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await consumer
            await client.aclose()
    if not latencies_ms:
        raise RuntimeError("no entry became visible")
    latencies_ms.sort()
    p50 = latencies_ms[len(latencies_ms) // 2]
    p99 = latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.99))]
    t50, m50 = at_most(p50, TARGET_FRESH_P50_MS, "ms")
    t99, m99 = at_most(p99, TARGET_FRESH_P99_MS, "ms")
    notes = f"{len(latencies_ms)} entries of {EVENTS_PER_FRESH_ENTRY} events over {seconds} s, in-process"
    return [
        Measurement(
            "aggregator freshness p50 (span end -> committed)", p50, "ms", target=t50, met=m50, notes=notes
        ),
        Measurement(
            "aggregator freshness p99 (span end -> committed)", p99, "ms", target=t99, met=m99, notes=notes
        ),
    ]


# --- memory ----------------------------------------------------------------------------------------


async def _unfinished(client: aioredis.Redis, stream: str, group: str) -> int:
    """Entries of ``stream`` the group has not acknowledged (pending, or not delivered yet)."""
    lag = await group_lag(client, stream, group)
    return 1 if lag is None else lag.behind  # no group yet: not started


def _memory_rows(
    samples: list[float],
    drain_samples: list[float],
    *,
    idle_mb: float,
    offered: int,
    seconds: int,
    backlog_events: int,
    drain_s: float,
    returncode: int | None,
) -> list[Measurement]:
    """The two RSS rows of :func:`memory`: sustained load, then draining a backlog."""
    if not samples or not drain_samples:
        raise RuntimeError("no RSS sample taken")
    peak = max(samples)
    quarter = max(1, len(samples) // 4)
    growth = statistics.mean(samples[-quarter:]) - statistics.mean(samples[:quarter])
    target, met = at_most(peak, TARGET_RSS_MB, "MB")
    drain_peak = max(drain_samples)
    drain_target, drain_met = at_most(drain_peak, TARGET_RSS_MB, "MB")
    return [
        Measurement(
            "aggregator peak RSS under sustained load",
            peak,
            "MB",
            baseline=idle_mb,
            baseline_name="RSS right after start-up",
            target=f"{target}, flat",
            met=met,
            notes=f"offered {offered:,} events/s for {seconds} s; last-quarter minus first-quarter "
            f"RSS {growth:+.1f} MB; exit code {returncode}",
            samples=samples,
        ),
        Measurement(
            "aggregator peak RSS draining a backlog",
            drain_peak,
            "MB",
            baseline=idle_mb,
            baseline_name="RSS right after start-up",
            target=drain_target,
            met=drain_met,
            notes=f"{backlog_events:,} events pushed at once, drained in {drain_s:.1f} s "
            f"({backlog_events / max(drain_s, 1e-9):,.0f} events/s, lag polled every 0.25 s)",
            samples=drain_samples,
        ),
    ]


async def memory(ctx: BenchContext) -> list[Measurement]:
    """RSS of a real aggregator process: under a sustained offered load, then draining a backlog
    (where its rounds reach their size bounds). Entries are encoded before the clock starts."""
    seconds = ctx.scale(40, 8)
    offered = ctx.scale(20_000, 5_000)
    backlog_events = ctx.scale(600_000, 30_000)
    settings = await ctx.migrated_settings("agg memory")
    rng = random.Random(11)
    users = users_of(settings, 5000)
    per_tick = offered // 10
    ticks = [entries_of(make_spans(rng, users, per_tick)) for _ in range(seconds * 10)]
    backlog = entries_of(make_spans(rng, users, backlog_events))
    env = {**os.environ, **settings.environment(), "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "studyin_analytics.aggregator.cli",
        "aggregator",
        "--consumer-name",
        "bench-mem",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[float] = []
    drain_samples: list[float] = []
    drain_s = 0.0
    try:
        process = psutil.Process(proc.pid)
        await asyncio.sleep(3.0)  # imports and connections
        idle_mb = process.memory_info().rss / 2**20
        client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
        stream = stream_keys(settings)[0]
        try:
            async with ctx.task("aggregator memory under sustained load", total=seconds) as task:
                started = time.perf_counter()
                for tick, entries in enumerate(ticks, start=1):
                    async with client.pipeline(transaction=False) as pipe:
                        for fields in entries:
                            pipe.xadd(stream, fields)
                        await pipe.execute()
                    if tick % 5 == 0:
                        samples.append(process.memory_info().rss / 2**20)
                    if tick % 10 == 0:
                        ctx.advance(task)
                    await asyncio.sleep(max(0.0, started + tick * 0.1 - time.perf_counter()))
            async with ctx.task("aggregator memory draining a backlog", total=None):
                await _push(settings, backlog)
                started = time.perf_counter()
                while await _unfinished(client, stream, settings.consumer_group):
                    drain_samples.append(process.memory_info().rss / 2**20)
                    if time.perf_counter() - started > 300:
                        raise RuntimeError("backlog not drained after 300 s")
                    await asyncio.sleep(0.25)
                drain_s = time.perf_counter() - started
        finally:
            await client.aclose()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return _memory_rows(
        samples,
        drain_samples,
        idle_mb=idle_mb,
        offered=offered,
        seconds=seconds,
        backlog_events=backlog_events,
        drain_s=drain_s,
        returncode=proc.returncode,
    )


@bench("aggregator")
async def aggregator_bench(ctx: BenchContext) -> list[Measurement]:
    """Throughput vs bare COPY, the raw COPY per column vs per row, freshness at 5k events/s, RSS."""
    spans = make_spans(random.Random(3), users_of(ctx.settings, 1000), ctx.scale(100_000, 5_000))
    rows = [row for span in spans for row in rows_from_span(span)]
    return [
        *await throughput(ctx),
        *await copy_encoding(ctx, rows),
        *await freshness(ctx),
        *await memory(ctx),
    ]
