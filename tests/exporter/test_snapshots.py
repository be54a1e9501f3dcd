"""Snapshots through Redis: publish bumps the version and notifies; a follower loads, follows changes,
and keeps its last good snapshot when a payload is bad or Redis is away."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedis
from studyin_analytics.exporter.snapshots import SnapshotFollower, publish_snapshot
from studyin_analytics.instrumentation.experiments import ExperimentSpec, decode_snapshot, encode_snapshot


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


# With the experiments' own payloads (instrumentation/experiments.py).
SPEC = ExperimentSpec("coach-prompt", 1, ("control", "treatment"), (1, 1))


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_published_versions_reach_a_started_follower(settings: Settings) -> None:
    url = settings.redis_url or ""
    client = redis.Redis.from_url(url)
    follower = SnapshotFollower(url, settings.stream_prefix, "experiments", decode_snapshot, {}, 3600.0)
    try:
        follower.start()
        assert follower.current() == {}  # nothing published yet: the empty value
        first = publish_snapshot(client, settings.stream_prefix, "experiments", encode_snapshot([SPEC]))
        # The notification, not the (hour-long) timer, brings the new snapshot.
        _wait(lambda: follower.current() == {SPEC.key: SPEC})
        second = publish_snapshot(client, settings.stream_prefix, "experiments", encode_snapshot([]))
        assert second == first + 1
        _wait(lambda: follower.current() == {})
    finally:
        follower.close()
        client.close()


def test_a_bad_payload_keeps_the_last_good_snapshot(settings: Settings) -> None:
    url = settings.redis_url or ""
    client = redis.Redis.from_url(url)
    follower = SnapshotFollower(url, settings.stream_prefix, "experiments", decode_snapshot, {})
    try:
        publish_snapshot(client, settings.stream_prefix, "experiments", encode_snapshot([SPEC]))
        assert follower.refresh_now()
        publish_snapshot(client, settings.stream_prefix, "experiments", b"{not json")
        assert not follower.refresh_now()
        assert follower.current() == {SPEC.key: SPEC}
    finally:
        follower.close()
        client.close()


def test_redis_going_away_keeps_the_last_good_snapshot(tmp_path: Path, test_id: str) -> None:
    """A Redis of the test's own, really stopped after the first load; then back with a new snapshot."""
    server = EmbeddedRedis(tmp_path)
    server.start()
    prefix = f"test:{test_id}"
    follower = SnapshotFollower(server.url, prefix, "experiments", decode_snapshot, {}, 0.2)
    try:
        client = redis.Redis.from_url(server.url)
        publish_snapshot(client, prefix, "experiments", encode_snapshot([SPEC]))
        client.close()
        follower.start()
        assert follower.current() == {SPEC.key: SPEC}
        server.stop()
        time.sleep(1.0)  # several refreshes fail meanwhile
        assert not follower.refresh_now()
        assert follower.current() == {SPEC.key: SPEC}
        server.start()
        client = redis.Redis.from_url(server.url)
        later = ExperimentSpec("coach-prompt", 2, ("control", "treatment"), (1, 3))
        publish_snapshot(client, prefix, "experiments", encode_snapshot([later]))
        client.close()
        _wait(lambda: follower.current() == {later.key: later})
    finally:
        follower.close()
        server.stop()


@pytest.mark.unit
def test_current_is_the_empty_value_before_any_load() -> None:
    follower = SnapshotFollower("redis://127.0.0.1:9/0", "p", "experiments", decode_snapshot, {})
    try:
        assert not follower.refresh_now()  # a closed port: refused, nothing raised
        assert follower.current() == {}
    finally:
        follower.close()
