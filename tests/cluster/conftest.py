"""A real Redis Cluster for the cluster tests: 3 primaries + 3 replicas on loopback ports.

Started once per test module (the failover module kills a primary, so it gets its own),
always torn down. A cluster that cannot start FAILS the tests; nothing skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedisCluster, EmbeddedServerError
from studyin_analytics.exporter.bus import stream_keys
from tests.support.cluster import SHARDS, slot_owners
from tests.support.cluster_acl import (
    ACL,
    ADMIN,
    ADMIN_PASSWORD,
    TRANSACTION_RULES,
    AclCluster,
    as_user,
    setuser_args,
    wait_replicated,
    without,
)


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


@pytest.fixture
def victim(cluster_settings: Settings, redis_cluster: EmbeddedRedisCluster) -> Iterator[str]:
    """A primary holding shards that is not the node of the configured URL (restarted afterwards)."""
    url_node = (cluster_settings.redis_url or "").removeprefix("redis://")
    owners = slot_owners(redis_cluster.primaries()[0])
    held = [owners[key_slot(key.encode())] for key in stream_keys(cluster_settings)]
    yield next(node for node in held if node != url_node)


@pytest.fixture(scope="module")
def acl_cluster(redis_cluster: EmbeddedRedisCluster) -> Iterator[AclCluster]:
    """The module's cluster with, on EVERY node: an admin, the documented user, one user per cluster
    rule lacking just that rule, one lacking ``+multi +exec``, and ``default`` off (replicas log in
    to their primary as the admin).
    """
    addresses = [node.address for node in redis_cluster.nodes]
    users = {ACL.user: ACL.rules + ACL.cluster_rules} | {
        without(rule): ACL.rules + [r for r in ACL.cluster_rules if r != rule] for rule in ACL.cluster_rules
    }
    users[without("multi-exec")] = [r for r in ACL.rules if r not in TRANSACTION_RULES] + ACL.cluster_rules
    for address in addresses:
        client = as_user(address, None, None)
        try:
            client.execute_command("ACL", "SETUSER", ADMIN, "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all")
            client.config_set("masteruser", ADMIN)
            client.config_set("masterauth", ADMIN_PASSWORD)
            for name, rules in users.items():
                client.execute_command("ACL", "SETUSER", name, "reset", *setuser_args(rules))
            client.execute_command("ACL", "SETUSER", "default", "off")
        finally:
            client.close()
    wait_replicated(addresses)
    yield AclCluster(redis_cluster, addresses)
