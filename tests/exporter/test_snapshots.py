"""Snapshots through Redis: publish bumps the version and notifies; a follower loads, follows changes,
and keeps its last good snapshot when a payload is bad or Redis is away."""

from __future__ import annotations

import time

import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.snapshots import SnapshotFollower, publish_snapshot


def wait_for(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def decode(payload: bytes) -> str:
    text = payload.decode()
    if text.startswith("bad"):
        raise ValueError("bad payload")
    return text


def test_publish_then_follow_changes_and_keep_the_last_good(settings: Settings) -> None:
    prefix = f"{settings.stream_prefix}:"
    client = redis.Redis.from_url(settings.redis_url or "")
    follower: SnapshotFollower[str] = SnapshotFollower(
        settings.redis_url or "", prefix, "kind-a", decode, "empty", refresh_interval_s=60.0
    )
    try:
        assert follower.refresh_now() and follower.current() == "empty"
        assert publish_snapshot(client, prefix, "kind-a", b"one") == 1
        follower.start()
        assert follower.current() == "one" and follower.version == 1
        assert publish_snapshot(client, prefix, "kind-a", b"two") == 2
        assert wait_for(lambda: follower.current() == "two")  # by the change channel, not the 60 s poll
        publish_snapshot(client, prefix, "kind-a", b"bad!")
        time.sleep(0.3)
        assert follower.current() == "two" and not follower.refresh_now()
        publish_snapshot(client, prefix, "kind-b", b"other kind")
        time.sleep(0.2)
        assert follower.current() == "two"
        assert client.hget(f"{prefix}snapshot:kind-a", "version") == b"3"
    finally:
        follower.close()
        client.close()


def test_a_follower_without_redis_keeps_its_snapshot(settings: Settings) -> None:
    follower: SnapshotFollower[str] = SnapshotFollower(
        "redis://127.0.0.1:9/0", "x:", "kind", decode, "empty", refresh_interval_s=0.05
    )
    try:
        assert not follower.refresh_now()
        follower.start()
        time.sleep(0.2)
        assert follower.current() == "empty"
    finally:
        follower.close()
