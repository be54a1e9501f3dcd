"""A retried POST to the track endpoint is replayed once: a refused custom event gets a deterministic id
(from the ``Idempotency-Key`` header, else from its content and minute) and its first attempt's time, so
``failed-events replay`` stores it once, also when the retry arrives after a replay."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.custom import registry
from studyin_analytics.aggregator.custom.replay import failed_entries, replay
from studyin_analytics.aggregator.storage.db import connect
from tests.support.api import LEARNER_A, open_api
from tests.support.custom_events import CASE, case_schema

TRACK = "/api/analytics/events/track"


def body(*scores: int) -> dict[str, Any]:
    return {
        "events": [
            {"type": CASE, "data": {"version": "1-0-0", "properties": {"case_id": "c1", "score": s}}}
            for s in scores
        ]
    }


async def post(settings: Settings, payload: dict[str, Any], key: str | None) -> None:
    async for api in open_api(settings):
        headers = api.auth(LEARNER_A) | ({"Idempotency-Key": key} if key else {})
        response = await api.client.post(TRACK, json=payload, headers=headers)
        assert response.status_code == 202, response.text
        assert {r["status"] for r in response.json()["results"]} == {"rejected"}  # not registered yet


async def failed_ids(settings: Settings) -> list[Any]:
    client = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        return [(f.event_id, f.time_us) async for _, f in failed_entries(client, settings)]
    finally:
        await client.aclose()


async def run_replay(settings: Settings) -> dict[str, Any]:
    client = aioredis.Redis.from_url(settings.redis_url or "")
    conn = await connect(settings, "aggregator")  # the role the CLI replays with
    try:
        return (await replay(conn, client, settings)).as_dict()
    finally:
        await conn.close()
        await client.aclose()


async def stored(settings: Settings) -> int:
    conn = await connect(settings)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM analytics_events WHERE event_type = $1", CASE))
    finally:
        await conn.close()


async def test_a_retried_post_is_replayed_once(migrated: Settings) -> None:
    settings = migrated
    if time.time() % 60 > 50:  # the keyless retry below must fall in the same minute
        await asyncio.sleep(61 - time.time() % 60)
    await post(settings, body(10, 20), "request-1")
    await post(settings, body(10, 20), "request-1")  # the client's retry: same key
    await post(settings, body(10, 20), "request-2")  # a new request with the same content: new events
    await post(settings, body(30), None)
    await post(settings, body(30), None)  # a keyless retry within the minute
    kept = await failed_ids(settings)
    assert len(kept) == 8 and len(set(kept)) == 5  # ids and times equal for each retry

    conn = await connect(settings)
    try:
        await registry.register(conn, CASE, "1-0-0", case_schema(), "test")
    finally:
        await conn.close()
    first = await run_replay(settings)
    assert (first["replayed"], first["already_stored"], first["still_failing"]) == (5, 3, 0)
    assert await stored(settings) == 5

    # A late retry, after the replay (the registry is not published, so the API still refuses it): kept
    # with the first attempt's id and time, so the next replay finds it stored.
    await post(settings, body(10, 20), "request-1")
    again = await run_replay(settings)
    assert again["replayed"] == 0
    assert await stored(settings) == 5
