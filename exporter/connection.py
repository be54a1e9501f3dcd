"""The one place that builds Redis clients of the bus from settings.

``settings.redis_cluster`` picks the client class: a plain ``redis.Redis`` for one server
(with or without replicas behind a proxy), a ``RedisCluster`` when ``redis_url`` names a
node of a Redis Cluster (the client discovers the others with ``CLUSTER SLOTS`` and follows
``MOVED`` after a failover). The URL carries TLS (``rediss://``) and the ACL user and
password (``rediss://user:password@host:port``) in both modes; cluster mode needs database 0.

Callers pass the timeouts they need; everything else about the connection is decided here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeAlias

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    NoPermissionError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry

from ..instrumentation.settings_base import redact_url, require
from .settings import BusSettings


def refused_command(exc: BaseException) -> str | None:
    """The ``NOPERM`` reply behind ``exc``, if an ACL refused a command (else ``None``).

    The cluster client reports a refused ``CLUSTER SLOTS`` as "Cluster mode is not enabled on
    this node"; the reply that says which rule the user lacks is in the exception chain. It
    names the ACL user and the command, never a value.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NoPermissionError) or (
            isinstance(current, redis.ResponseError) and "no permissions" in str(current)
        ):
            return str(current).splitlines()[0][:300]
        current = current.__cause__ or current.__context__
    return None


_NODE_IN_MESSAGE = re.compile(r"(?:connecting to|reading from|writing to) (\S+:\d+)")
"""How redis-py names the server in its connection errors ("Error 111 connecting to 10.0.0.7:6379")."""


def failed_node(exc: BaseException) -> str | None:
    """``host:port`` of the Redis node behind ``exc``, if the client named it (else ``None``).

    A cluster client fails on whichever node holds the slot, not on the node of the configured
    URL (only a startup node): naming the URL would send an operator to a healthy server.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _NODE_IN_MESSAGE.search(str(current))
        if found:
            return found.group(1)
        current = current.__cause__ or current.__context__
    return None


def unavailable(exc: BaseException, settings: BusSettings, nodes: Sequence[str] = ()) -> str:
    """What went wrong with a bus write, naming the server to look at (for log lines; no password).

    The node the client named; else, on one server, its (redacted) URL; on a cluster, the
    ``nodes`` the write went to, as far as the caller knows them.
    """
    cluster = settings.redis_cluster
    if isinstance(exc, NotReplicated):
        where = " or ".join(exc.nodes)
        return f"Redis {'Cluster node ' if cluster else ''}{where}: {exc} (NotReplicated)"
    reason = refused_command(exc) or type(exc).__name__
    node = failed_node(exc)
    if node is not None:
        return f"Redis {'Cluster node ' if cluster else ''}{node} unreachable ({reason})"
    url = redact_url(require(settings.redis_url, "redis_url"))
    if not cluster:
        return f"Redis {url} unreachable ({reason})"
    if nodes:
        return f"Redis Cluster node {' or '.join(sorted(set(nodes)))} unreachable ({reason})"
    return f"a Redis Cluster node unreachable ({reason}; startup node {url})"


SyncClient: TypeAlias = redis.Redis | RedisCluster
"""What :func:`sync_client` returns (the exporter's client)."""
AsyncClient: TypeAlias = aioredis.Redis | AsyncRedisCluster
"""What :func:`async_client` returns (gateway, bus reads, aggregator, API)."""

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    # Not a RedisError: a cluster client that cannot build its slot table (no node
    # reachable, slots not covered while a primary fails over) raises this.
    RedisClusterException,
)
"""Everything a bus write can raise while Redis (or part of a cluster) is unavailable."""


class NotReplicated(redis.RedisError):
    """A bus write that ``WAIT`` did not confirm on ``redis_wait_replicas`` replicas in time: a
    failover could lose it, so the writer does not count it as written (see :mod:`.replication`)."""

    def __init__(self, nodes: Sequence[str], replicas: int, timeout_ms: int) -> None:
        self.nodes = list(nodes)
        super().__init__(
            f"write not confirmed by {replicas} replica(s) within {timeout_ms} ms on {', '.join(self.nodes)}"
        )


CLUSTER_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ClusterDownError,  # CLUSTERDOWN / MASTERDOWN: a primary failed and its replica is not promoted yet
    TryAgainError,  # a slot is migrating
    RedisClusterException,
)
"""Cluster answers that mean "retry after the failover", never "this entry is bad"."""


def sync_client(
    settings: BusSettings,
    *,
    socket_timeout: float,
    socket_connect_timeout: float,
    retries: int | None = None,
) -> SyncClient:
    """A blocking client of the bus; ``retries=0`` leaves retrying to the caller.

    A cluster client connects to discover the slots when built (unlike ``redis.Redis``,
    which connects on first use), so this raises one of :data:`UNAVAILABLE_ERRORS` when no
    node answers.
    """
    url = require(settings.redis_url, "redis_url")
    if settings.redis_cluster:
        return RedisCluster.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            **({} if retries is None else {"retry": Retry(NoBackoff(), retries)}),
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        **({} if retries is None else {"retry": Retry(NoBackoff(), retries)}),
    )


def async_client(
    settings: BusSettings,
    *,
    socket_timeout: float,
    socket_connect_timeout: float,
    health_check_interval: float = 0,
    retries: int | None = None,
) -> AsyncClient:
    """An asyncio client of the bus (connects lazily, in both modes)."""
    url = require(settings.redis_url, "redis_url")
    retry: dict[str, Any] = {} if retries is None else {"retry": AsyncRetry(NoBackoff(), retries)}
    if settings.redis_cluster:
        return AsyncRedisCluster.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=health_check_interval,
            **retry,
        )
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        health_check_interval=health_check_interval,
        **retry,
    )
