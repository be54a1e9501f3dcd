"""Helpers shared by the tests (constants, canary dumps)."""

from __future__ import annotations

import asyncpg
import redis

from studyin_analytics.instrumentation.settings import Settings

TEST_PSEUDONYM_KEY = "test-key-0123456789abcdef"
TEST_JWT_SECRET = "test-jwt-secret-0123456789abcdef0123"


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
