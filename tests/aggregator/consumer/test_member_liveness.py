"""Shards and pending entries change hands by the owning member's liveness, not by their age.

With ``consumer_shards`` each member reads its own shards. After any outage longer than
``claim_idle_ms`` every unread entry is old and every pending entry idle, so members used to
adopt each other's shards, and claim each other's pending entries, at their first claim round,
though the owners were alive and busy: shard affinity was lost. Now a member says it is alive
(a heartbeat key per member and per own shard, expiring after ``claim_idle_ms``) and the others
take over only what belongs to a member whose heartbeat has expired. Real
``studyin-analytics aggregator`` processes, SIGKILLed for real.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.schema import migrate
from studyin_analytics.exporter.bus import group_lag, stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.aggregator_group import aggregators, check_exact
from tests.support.workload import Workload, build

pytestmark = pytest.mark.slow

SHARDS = 4
CLAIM_IDLE_MS = 3000
ADOPTED = "reading it too"
CLAIMED = "claimed"


def _push(settings: Settings, wl: Workload) -> None:
    """The workload round-robin over the shard streams."""
    streams = stream_keys(settings)
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        pipe = client.pipeline(transaction=False)
        for i, fields in enumerate(wl.entries):
            pipe.xadd(streams[i % len(streams)], fields)
        pipe.execute()
    finally:
        client.close()


def _hold(settings: Settings, member: str, shards: list[int], count: int) -> int:
    """Deliver ``count`` entries of each of ``shards`` to ``member`` and never acknowledge them."""
    streams = stream_keys(settings)
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        held = 0
        for shard in shards:
            reply: Any = client.xreadgroup(
                settings.consumer_group, member, {streams[shard]: ">"}, count=count
            )
            held += sum(len(entries) for _, entries in reply or [])
        return held
    finally:
        client.close()


def _behind(settings: Settings) -> int:
    async def total() -> int:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            lags = [await group_lag(client, s, settings.consumer_group) for s in stream_keys(settings)]
            return sum(1 if lag is None else lag.behind for lag in lags)
        finally:
            await client.aclose()

    return asyncio.run(total())


def _wait(condition: Any, what: str, timeout_s: float, logs: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout_s}s\n{logs}")
        time.sleep(0.1)


def _log(tmp_path: Path, member: str) -> str:
    return (tmp_path / f"{member}.log").read_text(errors="replace")


def test_busy_members_keep_their_shards_after_an_outage_and_a_killed_ones_are_taken_over(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.with_overrides(stream_shards=SHARDS, claim_idle_ms=CLAIM_IDLE_MS)
    migrate(settings)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    first, second = build(pseudonymizer, users=300, seed=61), build(pseudonymizer, users=200, seed=62)
    streams = stream_keys(settings)
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        for stream in streams:
            client.xgroup_create(stream, settings.consumer_group, id="0", mkstream=True)
    finally:
        client.close()
    _push(settings, first)
    # Both members' previous lives died holding entries; then everything waits out an outage.
    assert _hold(settings, "member-a", [0, 2], 5) == 10 and _hold(settings, "member-b", [1, 3], 5) == 10
    time.sleep(CLAIM_IDLE_MS / 1000 + 0.5)

    env = {
        "STUDYIN_ANALYTICS_STREAM_SHARDS": str(SHARDS),
        "STUDYIN_ANALYTICS_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
        "STUDYIN_ANALYTICS_BATCH_SIZE": "10",
    }
    with (
        aggregators(settings, tmp_path, STUDYIN_ANALYTICS_CONSUMER_SHARDS="0/2", **env) as group_a,
        aggregators(settings, tmp_path, STUDYIN_ANALYTICS_CONSUMER_SHARDS="1/2", **env) as group_b,
    ):
        group_a.start("member-a")
        group_b.start("member-b")
        both = lambda: group_a.log_tail() + group_b.log_tail()  # noqa: E731
        _wait(lambda: _behind(settings) == 0, "the backlog drained", 180, both())
        # Old backlog, idle pending entries, owners alive and busy: nothing changed hands.
        for member in ("member-a", "member-b"):
            assert ADOPTED not in _log(tmp_path, member), both()
            assert CLAIMED not in _log(tmp_path, member), both()

        group_b.kill("member-b")
        killed_at = time.monotonic()
        _push(settings, second)
        assert _hold(settings, "member-b", [1, 3], 3) == 6  # it died holding entries too
        _wait(lambda: _log(tmp_path, "member-a").count(ADOPTED) == 2, "both shards adopted", 60, both())
        adopted_after = time.monotonic() - killed_at
        _wait(lambda: _behind(settings) == 0, "the backlog drained by the survivor", 180, both())
        assert CLAIMED in _log(tmp_path, "member-a"), both()
        assert group_a.terminate_all() == {"member-a": 0}, both()
    # Its heartbeat had up to a third of claim_idle_ms left to run when it was killed.
    assert adopted_after >= CLAIM_IDLE_MS / 1000 * 2 / 3, adopted_after
    assert check_exact(settings, first + second) == []
