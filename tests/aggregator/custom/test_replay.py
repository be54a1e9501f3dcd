"""Failed custom events are recovered: events of a schema not yet registered (and invalid ones) go to the
failed-events stream with their reasons; after registration a replay stores the valid ones exactly once
(a second replay, and duplicated entries, change nothing) and the daily rollup equals a brute-force count."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.custom import registry
from studyin_analytics.aggregator.custom.replay import failed_entries, replay
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.custom_events import CASE, QUIZ, case_schema, custom_span, entry_of, quiz_schema
from tests.support.workload import push

HOUR_NS = 3600 * 1_000_000_000


async def drain(settings: Settings) -> None:
    async with Aggregator(settings) as aggregator:
        await asyncio.wait_for(aggregator.drain(timeout_s=60), timeout=90)


async def failed(settings: Settings) -> list[Any]:
    client = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        return [event async for _, event in failed_entries(client, settings)]
    finally:
        await client.aclose()


async def run_replay(settings: Settings, event_type: str | None = None) -> dict[str, Any]:
    client = aioredis.Redis.from_url(settings.redis_url or "")
    conn = await connect(settings, "aggregator")  # the role the CLI replays with
    try:
        return (await replay(conn, client, settings, event_type=event_type)).as_dict()
    finally:
        await conn.close()
        await client.aclose()


async def stored(settings: Settings) -> tuple[Counter[tuple[Any, str]], Counter[tuple[Any, str]]]:
    conn = await connect(settings)
    try:
        raw = await conn.fetch(
            "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, event_type, count(*) AS n "
            "FROM analytics_events WHERE event_type LIKE '%/%' GROUP BY 1, 2"
        )
        daily = await conn.fetch("SELECT day, event_type, events FROM custom_event_daily")
    finally:
        await conn.close()
    return (
        Counter({(r["day"], r["event_type"]): r["n"] for r in raw}),
        Counter({(r["day"], r["event_type"]): r["events"] for r in daily}),
    )


async def test_events_before_registration_are_recovered_exactly_once(migrated: Settings) -> None:
    settings = migrated
    pseudonymizer = Pseudonymizer.from_settings(settings)
    rng = random.Random(20)
    now = time.time_ns()
    conn = await connect(settings)
    try:
        await registry.register(conn, QUIZ, "1-0-0", quiz_schema(), "test")
    finally:
        await conn.close()
    truth: Counter[tuple[Any, str]] = Counter()
    spans = []
    bad_scores = 0
    for learner in range(12):
        events = []
        for _ in range(rng.randint(1, 6)):
            at = now - rng.randint(0, 40) * HOUR_NS - rng.randint(0, HOUR_NS)
            day = datetime.fromtimestamp(at / 1e9, UTC).date()
            if rng.random() < 0.5:
                events.append((QUIZ, "1-0-0", {"quiz": f"q{rng.randint(1, 9)}", "correct": True}, at))
                truth[(day, QUIZ)] += 1
            elif rng.random() < 0.8:
                events.append((CASE, "1-0-0", {"case_id": f"c{learner}", "score": rng.randint(0, 100)}, at))
                truth[(day, CASE)] += 1
            else:  # invalid even after registration
                events.append((CASE, "1-0-0", {"case_id": "c", "score": 500}, at))
                bad_scores += 1
        spans.append(custom_span(pseudonymizer, events, learner=f"learner-{learner}"))
    entries = [entry_of(spans[i : i + 3]) for i in range(0, len(spans), 3)]
    push(settings.redis_url or "", stream_keys(settings)[0], [*entries, entries[0]])  # one entry twice

    await drain(settings)

    refused = await failed(settings)
    case_total = sum(n for (_, t), n in truth.items() if t == CASE)
    unique = {f.event_id for f in refused}
    assert len(unique) == case_total + bad_scores
    assert {(e.pointer, e.reason) for f in refused for e in f.errors} == {
        ("", f"schema {CASE} 1-0-0 is not registered")
    }
    raw, daily = await stored(settings)
    assert raw == daily == Counter({k: n for k, n in truth.items() if k[1] == QUIZ})

    nothing = await run_replay(settings)  # not registered yet: nothing passes, all stay
    assert nothing["replayed"] == 0 and nothing["still_failing"] == len(refused)

    conn = await connect(settings)
    try:
        await registry.register(conn, CASE, "1-0-0", case_schema(), "test")
    finally:
        await conn.close()
    first = await run_replay(settings, event_type=CASE)
    assert first["replayed"] == case_total
    assert first["reasons"] == {"/score: fails maximum 100": first["still_failing"]}
    raw, daily = await stored(settings)
    assert raw == daily == truth

    second = await run_replay(settings)
    assert second["replayed"] == 0
    assert (await stored(settings)) == (truth, truth)
    left = await failed(settings)
    assert {f.event_id for f in left} == {f.event_id for f in refused if f.properties.get("score") == 500}
