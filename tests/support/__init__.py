"""Helpers shared by the tests (constants, canary dumps, the documented Redis ACL)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis

from studyin_analytics.instrumentation.settings import Settings

TEST_PSEUDONYM_KEY = "test-key-0123456789abcdef"
TEST_JWT_SECRET = "test-jwt-secret-0123456789abcdef0123"


ROOT = Path(__file__).resolve().parents[2]
"""The repository's root."""
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class DocumentedAcl:
    user: str
    rules: list[str]
    """The rules after ``user NAME`` of the single-server line, ``>PASSWORD`` as written."""
    cluster_rules: list[str]
    """What the docs add on a Redis Cluster."""
    key_prefix: str
    """The prefix the line's key pattern (``~PREFIX:*``) confines the user to."""

    def line(self, user: str, password: str, prefix: str) -> str:
        """The documented single-server line for ``user``, its password and key ``prefix``."""
        rules = [
            f">{password}" if rule == ">PASSWORD" else f"~{prefix}:*" if rule.startswith("~") else rule
            for rule in self.rules
        ]
        return " ".join(["user", user, *rules])


def _cluster_rules(text: str, pattern: str, doc: str) -> list[str]:
    found = re.search(pattern, text)
    assert found, (
        f"docs/{doc} no longer states the cluster's ACL rules where this test reads them ({pattern})"
    )
    return found.group(1).replace("\\|", "|").split()  # `|` is escaped inside a table cell


def documented_acl() -> DocumentedAcl:
    """The ACL line of docs/production.md, and its cluster addition (the same in docs/bus.md)."""
    production = (DOCS / "production.md").read_text()
    row = next(
        (line for line in production.splitlines() if line.startswith("| least privilege in Redis |")), ""
    )
    line = re.search(r"`user (\S+) (on >PASSWORD [^`]+)`", row)
    assert line, (
        "docs/production.md: the 'least privilege in Redis' row has no `user NAME on >PASSWORD ...` line"
    )
    rules = line.group(2).split()
    cluster_rules = _cluster_rules(row, r"on a Redis Cluster add `([^`]+)`", "production.md")
    in_bus = _cluster_rules((DOCS / "bus.md").read_text(), r"also needs `([^`]+)` in cluster mode", "bus.md")
    assert in_bus == cluster_rules, (
        f"docs/bus.md ({in_bus}) and docs/production.md ({cluster_rules}) disagree"
    )
    patterns = [rule[1:] for rule in rules if rule.startswith("~")]
    assert len(patterns) == 1 and patterns[0].endswith(":*"), f"one key pattern PREFIX:* expected: {rules}"
    return DocumentedAcl(line.group(1), rules, cluster_rules, patterns[0].removesuffix(":*"))


class ServerUrls:
    """Where the session's Redis and PostgreSQL are (the ``server_urls`` fixture)."""

    def __init__(self, redis_url: str, postgres_url: str) -> None:
        self.redis_url = redis_url
        self.postgres_url = postgres_url


def redis_dump(url: str, prefix: str) -> bytes:
    """Every key and value under ``prefix`` as bytes (for privacy canaries)."""
    client = redis.Redis.from_url(url)
    out = bytearray()
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            out += key
            kind = client.type(key)
            if kind == b"stream":
                for entry_id, fields in client.xrange(key):
                    out += entry_id
                    for k, v in fields.items():
                        out += k + v
            elif kind == b"string":
                out += client.get(key) or b""
            elif kind == b"hash":
                for k, v in client.hgetall(key).items():
                    out += k + v
    finally:
        client.close()
    return bytes(out)


async def postgres_dump(settings: Settings) -> str:
    """Every row of every table in the test schema as text (for privacy canaries)."""
    conn = await asyncpg.connect(settings.postgres_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            settings.postgres_schema,
        )
        parts = []
        for (table,) in tables:
            rows = await conn.fetch(f'SELECT t::text FROM "{settings.postgres_schema}"."{table}" t')
            parts.extend(r[0] for r in rows)
        return "\n".join(parts)
    finally:
        await conn.close()
