"""PostgreSQL connections of the aggregator and the query API (asyncpg)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from ..instrumentation.settings import Settings, require


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "dsn": require(settings.postgres_url, "postgres_url"),
        "server_settings": {"search_path": f"{settings.postgres_schema},public"},
        "init": _init_connection,
    }


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """A pool whose connections see the analytics schema first on their search path."""
    kwargs = connect_kwargs(settings)
    return await asyncpg.create_pool(min_size=min_size, max_size=max_size, **kwargs)


async def connect(settings: Settings) -> asyncpg.Connection:
    kwargs = connect_kwargs(settings)
    init = kwargs.pop("init")
    conn = await asyncpg.connect(**kwargs)
    await init(conn)
    return conn
