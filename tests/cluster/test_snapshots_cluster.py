"""Snapshots (``exporter/snapshots.py``) on a real Redis Cluster: publishing and following work whichever
node holds the snapshot's slot, with the same clients the services build (``exporter/connection.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from redis.crc import key_slot

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedisCluster
from studyin_analytics.exporter.bus import SNAPSHOT_KEYS
from studyin_analytics.exporter.connection import async_client, sync_client
from studyin_analytics.exporter.snapshots import SnapshotFollower, publish_snapshot, publish_snapshot_async
from tests.support.cluster import slot_owners

KINDS = [f"kind-{i}" for i in range(8)]


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_publish_and_follow_on_every_primary(
    cluster_settings: Settings, redis_cluster: EmbeddedRedisCluster
) -> None:
    prefix = f"{cluster_settings.stream_prefix}:"
    owners = slot_owners(redis_cluster.primaries()[0])
    keys = [SNAPSHOT_KEYS[0].format(prefix=prefix, kind=kind) for kind in KINDS]
    assert len({owners[key_slot(k.encode())] for k in keys}) > 1  # the kinds live on several primaries
    followers = [
        SnapshotFollower(
            cluster_settings.redis_url or "", prefix, kind, bytes.decode, "", 3600.0, cluster=True
        )
        for kind in KINDS
    ]
    client = sync_client(cluster_settings, socket_timeout=5, socket_connect_timeout=2)
    try:
        for follower in followers:
            follower.start()
        for kind in KINDS:
            assert publish_snapshot(client, prefix, kind, f"{kind} one".encode()) == 1
        # By the change channel (the poll is an hour away), whichever node a follower subscribed on.
        assert _wait(lambda: all(f.current() == f"{k} one" for f, k in zip(followers, KINDS, strict=True)))
        assert all(f.version == 1 for f in followers)

        async def publish_async() -> list[int]:
            aclient = async_client(cluster_settings, socket_timeout=5, socket_connect_timeout=2)
            try:
                return [await publish_snapshot_async(aclient, prefix, k, f"{k} two".encode()) for k in KINDS]
            finally:
                await aclient.aclose()

        assert asyncio.run(publish_async()) == [2] * len(KINDS)
        assert _wait(lambda: all(f.current() == f"{k} two" for f, k in zip(followers, KINDS, strict=True)))
    finally:
        for follower in followers:
            follower.close()
        client.close()


def test_a_cluster_follower_started_without_the_cluster_keeps_its_empty_snapshot() -> None:
    follower = SnapshotFollower(
        "redis://127.0.0.1:9/0", "x:", "kind", bytes.decode, "empty", 0.05, cluster=True
    )
    try:
        assert not follower.refresh_now()
        follower.start()
        time.sleep(0.2)
        assert follower.current() == "empty"
    finally:
        follower.close()
