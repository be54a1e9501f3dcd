"""Builders of the Redis Cluster tests: clients, CLI environment, bus contents, slot moves."""

from __future__ import annotations

import os
import sys
import time

import redis
from redis.cluster import RedisCluster

from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedisCluster
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.settings import Settings

SHARDS = 6
"""Two shards per primary: enough to see every primary hold streams."""
CLI = [sys.executable, "-m", "studyin_analytics.aggregator.cli"]


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


def _node_id(address: str) -> str:
    client = node_client(address)
    try:
        value = client.execute_command("CLUSTER", "MYID")
        return value.decode() if isinstance(value, bytes) else str(value)
    finally:
        client.close()


def migrate_slot(cluster: EmbeddedRedisCluster, slot: int, target: str, timeout_s: float = 30.0) -> str:
    """Move ``slot`` and its keys to the primary at ``target`` while the cluster serves, the way
    ``redis-cli --cluster reshard`` does (``CLUSTER SETSLOT … IMPORTING/MIGRATING``, ``MIGRATE``,
    ``CLUSTER SETSLOT … NODE`` on every primary); returns the address of the previous owner."""
    source = slot_owners(target)[slot]
    source_id, target_id = _node_id(source), _node_id(target)
    src, dst = node_client(source), node_client(target)
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        host, port = target.rsplit(":", 1)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)
        for address in [target, source, *(p for p in cluster.primaries() if p not in (source, target))]:
            node = node_client(address)
            try:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            finally:
                node.close()
    finally:
        src.close()
        dst.close()
    deadline = time.monotonic() + timeout_s
    while any(slot_owners(node.address).get(slot) != target for node in cluster.live_nodes()):
        if time.monotonic() > deadline:
            raise AssertionError(f"slot {slot} not owned by {target} on every node after {timeout_s}s")
        time.sleep(0.1)
    return source


def wait_replicated(cluster: EmbeddedRedisCluster, primary: str, timeout_s: float = 30.0) -> str:
    """Wait until the replica of ``primary`` has everything it wrote; returns the replica's address."""
    replica = next(a for a, (role, of) in cluster.topology().items() if role == "replica" and of == primary)
    source, copy = node_client(primary), node_client(replica)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            written = int(source.info("replication")["master_repl_offset"])
            if int(copy.info("replication")["slave_repl_offset"]) >= written:
                return replica
            time.sleep(0.05)
    finally:
        source.close()
        copy.close()
    raise AssertionError(f"{replica} did not catch up with {primary} within {timeout_s}s")
