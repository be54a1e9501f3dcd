"""A real Redis Cluster for the cluster tests: 3 primaries + 3 replicas on loopback ports.

Started once per test module (the failover module kills a primary, so it gets its own),
always torn down. A cluster that cannot start FAILS the tests; nothing skips.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from studyin_analytics.aggregator.embedded import EmbeddedRedisCluster, EmbeddedServerError
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.settings import Settings

SHARDS = 6
"""Two shards per primary: enough to see every primary hold streams."""
CLI = [sys.executable, "-m", "studyin_analytics.aggregator.cli"]


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    try:
        cluster = EmbeddedRedisCluster(primaries=3).__enter__()
    except (EmbeddedServerError, OSError) as exc:
        pytest.fail(f"cannot start a local Redis Cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: EmbeddedRedisCluster) -> Settings:
    """The test's settings (own schema, own prefix) pointed at the cluster."""
    return settings.with_overrides(redis_url=redis_cluster.url, redis_cluster=True, stream_shards=SHARDS)


def cluster_client(settings: Settings) -> RedisCluster:
    return RedisCluster.from_url(settings.redis_url or "", socket_timeout=5, socket_connect_timeout=2)


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment of a ``studyin-analytics`` subprocess on ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    return {**env, **settings.environment(), "STUDYIN_ANALYTICS_REDIS_CLUSTER": "true"}


def bus_entries(settings: Settings) -> dict[str, list[tuple[bytes, dict[bytes, bytes]]]]:
    """Every entry of every shard stream, read through the cluster client."""
    client = cluster_client(settings)
    try:
        return {key: list(client.xrange(key)) for key in stream_keys(settings)}
    finally:
        client.close()


def records_of(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[wire.SpanRecord]:
    return [record for _, fields in entries for record in wire.decode_entry(fields)]


def node_client(address: str) -> redis.Redis:
    """A plain client of one node: it never follows MOVED, so it sees only that node's keys."""
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=5)


def slot_owners(address: str) -> dict[int, str]:
    """``slot -> primary address`` as the node at ``address`` sees the cluster (CLUSTER SLOTS)."""
    client = node_client(address)
    try:
        owners: dict[int, str] = {}
        for start, end, primary, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            for slot in range(int(start), int(end) + 1):
                owners[slot] = f"{host}:{int(primary[1])}"
        return owners
    finally:
        client.close()
