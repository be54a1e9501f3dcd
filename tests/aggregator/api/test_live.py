"""GET /api/analytics/live under a hostile learner: one tail reader, capped feeds, token expiry.

On a real uvicorn server (feeds are endless streams) with real Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import httpx
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from tests.support.api import LEARNER_A, LEARNER_B, STAFF, Api, bearer, served, token

LIVE = "/api/analytics/live"


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) of an SSE response as they arrive."""
    event = "message"
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])
            event = "message"


async def _open(
    stack: AsyncExitStack, client: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[httpx.Response, AsyncIterator[tuple[str, dict[str, Any]]]]:
    response = await stack.enter_async_context(client.stream("GET", LIVE, headers=headers))
    events = _events(response)
    if response.status_code == 200:
        assert (await asyncio.wait_for(anext(events), 10))[0] == "hello"
    return response, events


async def _blocked_readers(redis_url: str) -> int:
    """Clients of the Redis server blocked in XREAD right now."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return sum(1 for c in await client.client_list() if c.get("cmd") == "xread")
    finally:
        await client.aclose()


async def test_feeds_share_one_tail_reader_and_the_api_stays_ready(migrated: Settings) -> None:
    """120 feeds of one learner (what once exhausted the API's Redis pool): one XREAD, /readyz
    200, and an event of the learner reaches every feed."""
    settings = migrated.with_overrides(live_feeds_per_user=150, live_feeds_total=150)
    headers = bearer(token(settings, LEARNER_A, expires_in=timedelta(minutes=10)))
    before = await _blocked_readers(settings.redis_url or "")
    async with served(settings) as (base, app), AsyncExitStack() as stack:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=base, limits=limits, timeout=20))
        feeds = [await _open(stack, client, headers) for _ in range(120)]
        assert all(response.status_code == 200 for response, _ in feeds)
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        await asyncio.sleep(1.5)  # every reader is in its XREAD by now
        assert await _blocked_readers(settings.redis_url or "") - before <= 1
        hub = app.state.live_hub
        assert hub.open_feeds == 120 and hub.reading

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
        tracker = StudyInTracker(
            tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings)
        )
        tracker.xp_awarded(LEARNER_B, 5, "not_yours")
        tracker.xp_awarded(LEARNER_A, 7, "fan_out")
        provider.shutdown()

        async def first_activity(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
            async for event, data in events:
                if event == "activity":
                    return data
            raise AssertionError("the feed ended")

        items = await asyncio.wait_for(asyncio.gather(*(first_activity(e) for _, e in feeds)), 20)
        assert {item["fields"]["xp_reason"] for item in items} == {"fan_out"}  # own events only
    assert hub.open_feeds == 0 and not hub.reading  # every slot freed, the reader stopped


async def test_feeds_are_capped_per_user_and_per_server(migrated: Settings) -> None:
    settings = migrated.with_overrides(live_feeds_total=5)  # per user: the default, 3
    assert settings.live_feeds_per_user == 3
    learner_a, learner_b = bearer(token(settings, LEARNER_A)), bearer(token(settings, LEARNER_B))
    staff = bearer(token(settings, STAFF, roles=["staff"]))
    async with served(settings) as (base, app), AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=20))
        # Kept: a dropped event iterator closes its response, and that frees the feed's slot.
        feeds = [await _open(stack, client, learner_a) for _ in range(3)]
        refused = await client.get(LIVE, headers=learner_a)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_live_feeds" and refused.headers["retry-after"]
        assert refused.headers["content-type"].startswith("application/problem+json")
        feeds.append(await _open(stack, client, learner_b))
        async with client.stream("GET", LIVE, headers=learner_b) as last:
            assert last.status_code == 200
            full = await client.get(LIVE, headers=staff)
            assert full.status_code == 503, full.text
            assert full.json()["code"] == "live_feeds_exhausted" and full.headers["retry-after"]
        for _ in range(50):  # the closed feed's slot is free again
            if app.state.live_hub.open_feeds == 4:
                break
            await asyncio.sleep(0.1)
        response, _ = await _open(stack, client, staff)
        assert response.status_code == 200
        assert len(feeds) == 4 and app.state.live_hub.open_feeds == 5


async def test_a_feed_ends_when_its_token_expires(migrated: Settings) -> None:
    headers = bearer(token(migrated, LEARNER_A, expires_in=timedelta(seconds=3)))
    async with served(migrated) as (base, _app), httpx.AsyncClient(base_url=base, timeout=20) as client:
        started = time.monotonic()
        async with client.stream("GET", LIVE, headers=headers) as response:
            assert response.status_code == 200
            seen = await asyncio.wait_for(_all(_events(response)), 15)
        assert seen[0][0] == "hello" and seen[-1] == ("end", {"reason": "token_expired"})
        # Ends at the expiry (3 s), not at once, and not long after (10 s leaves room for a loaded CI host).
        assert 2 <= time.monotonic() - started < 10
        again = await client.get(LIVE, headers=headers)
        assert again.status_code == 401  # within the 30 s clock-skew leeway too: the feed is over
        assert again.json()["code"] == "token_expired"


async def _all(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [item async for item in events]


async def test_unknown_query_parameters_are_rejected(api: Api) -> None:
    response = await api.client.get(LIVE, params={"user": "someone-else"}, headers=api.auth(LEARNER_A))
    assert response.status_code == 422, response.text
    assert ["query", "user"] in [e["loc"] for e in response.json()["errors"]]
