"""The Redis ACL of docs/production.md on a real Redis Cluster: the users the ``acl_cluster`` fixture
(tests/cluster/conftest.py) creates on every node, and clients of one node as one of them."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedisCluster
from tests.support import documented_acl

APP_PASSWORD = "cluster-app-password-0123456789"
TRANSACTION_RULES = ["+multi", "+exec"]
"""The aggregator moves an entry to the dead letter with XADD + XACK in one MULTI/EXEC."""
ADMIN = "admin"
ADMIN_PASSWORD = "cluster-admin-password-0123456789"


ACL = documented_acl()


def without(rule: str) -> str:
    """The name of the user that has every documented rule but ``rule``."""
    return "without-" + re.sub(r"\W+", "-", rule).strip("-")


def setuser_args(rules: list[str]) -> list[str]:
    return [f">{APP_PASSWORD}" if rule == ">PASSWORD" else rule for rule in rules]


def command_of(rule: str) -> list[str]:
    """``+cluster|slots`` -> ``["CLUSTER", "SLOTS"]`` (what the rule allows)."""
    assert rule.startswith("+") and "@" not in rule, f"not a single-command rule: {rule}"
    return rule[1:].upper().split("|")


def node_address(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def as_user(address: str, user: str | None, password: str | None) -> redis.Redis:
    """A plain client of one node (never follows MOVED) logged in as ``user``."""
    host, port = node_address(address)
    return redis.Redis(host=host, port=port, username=user, password=password, socket_timeout=5)


def admin(address: str) -> redis.Redis:
    return as_user(address, ADMIN, ADMIN_PASSWORD)


@dataclass
class AclCluster:
    cluster: EmbeddedRedisCluster
    addresses: list[str]

    def url(self, user: str) -> str:
        """What a service is given: ``redis://user:password@node/0`` of one node."""
        return f"redis://{user}:{APP_PASSWORD}@{self.addresses[0]}/0"

    def acl_log(self) -> dict[str, list[dict[str, Any]]]:
        """Every node's ``ACL LOG`` (what was refused, to whom)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for address in self.addresses:
            client = admin(address)
            try:
                out[address] = client.acl_log()
            finally:
                client.close()
        return out

    def reset_acl_log(self) -> None:
        for address in self.addresses:
            client = admin(address)
            try:
                client.acl_log_reset()
            finally:
                client.close()


def wait_replicated(addresses: list[str], timeout_s: float = 30.0) -> None:
    """Every replica linked to its primary again (it now logs in as the admin) and the cluster ok."""
    deadline = time.monotonic() + timeout_s
    while True:
        states: dict[str, tuple[str, str]] = {}
        for address in addresses:
            client = admin(address)
            try:
                replication = client.info("replication")
                info = client.execute_command("CLUSTER", "INFO").decode()
            finally:
                client.close()
            link = (
                "primary" if replication["role"] == "master" else str(replication.get("master_link_status"))
            )
            states[address] = (link, "ok" if "cluster_state:ok" in info else "not ok")
        if all(link in ("primary", "up") and state == "ok" for link, state in states.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"cluster unhealthy after the ACL setup: {states}", pytrace=False)
        time.sleep(0.1)
