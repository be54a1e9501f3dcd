"""Durable bus writes: ``WAIT`` for replicas after a writer's ``XADD``s (``redis_wait_replicas``).

Redis replicates asynchronously: a primary acknowledges an ``XADD`` before its replicas have it,
and if it dies then, the promoted replica never had the entry (an induced failover lost 683
acknowledged events). ``WAIT numreplicas timeout`` on the connection that wrote blocks until that
many replicas have everything it wrote, or the timeout passes, and answers how many did. A write
confirmed that way survives the loss of its primary (not of the primary and those replicas
together).

The writers (exporter, gateway) queue one ``WAIT`` per node their batch went to at the end of
the same pipeline, hence on the same connection as that node's ``XADD``s (a cluster pipeline
sends one pipeline per node). A batch counts as written only if every ``WAIT`` reached
``redis_wait_replicas`` and no ``XADD`` was redirected to another node meanwhile (``MOVED``
during a failover or a slot migration: its ``WAIT`` went elsewhere); otherwise
:class:`~.connection.NotReplicated` is raised, one of the errors that make the exporter retry
and then spool, and the gateway answer 503. The batch is written again later: a duplicate on the
bus, which the aggregator's deterministic event ids turn into a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from .connection import AsyncClient, NotReplicated, SyncClient
from .settings import BusSettings


def _server_name(client: redis.Redis | aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def wait_targets(client: SyncClient | AsyncClient, keys: Sequence[str]) -> dict[str, Any]:
    """The nodes a write of ``keys`` goes to, by ``host:port``: the primaries holding them on a
    cluster (as the client knows the slots; an async cluster client must be initialized), the
    server otherwise (its value ``None``: no target needed)."""
    if isinstance(client, redis.Redis | aioredis.Redis):
        return {_server_name(client): None}
    nodes = {}
    for key in keys:
        node = client.get_node_from_key(key)
        if node is not None:
            nodes[node.name] = node
    return nodes


async def wait_targets_async(client: AsyncClient, keys: Sequence[str]) -> dict[str, Any]:
    """:func:`wait_targets` for an asyncio client (a cluster client learns its slots first, once)."""
    if isinstance(client, AsyncRedisCluster):
        await client.initialize()
    return wait_targets(client, keys)


def queue_waits(pipe: Any, targets: dict[str, Any], settings: BusSettings) -> int:
    """Append one ``WAIT`` per target to ``pipe`` (after the writes); returns how many."""
    for node in targets.values():
        args = ("WAIT", settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
        if node is None:
            pipe.execute_command(*args)
        else:
            pipe.execute_command(*args, target_nodes=node)
    return len(targets)


def confirm(
    client: SyncClient | AsyncClient,
    keys: Sequence[str],
    targets: dict[str, Any],
    replies: Sequence[Any],
    settings: BusSettings,
) -> None:
    """Raise :class:`NotReplicated` unless every ``WAIT`` reached the replicas asked for and every
    key of the write is still on the node that was waited on."""
    wanted = settings.redis_wait_replicas
    short = [name for name, reply in zip(targets, replies, strict=True) if int(reply) < wanted]
    if not isinstance(client, redis.Redis | aioredis.Redis):
        moved = [key for key in keys if getattr(client.get_node_from_key(key), "name", None) not in targets]
        if moved:  # redirected meanwhile: its WAIT went to the node it left
            short.extend(sorted(set(targets)))
    if short:
        raise NotReplicated(sorted(set(short)), wanted, settings.redis_wait_timeout_ms)
