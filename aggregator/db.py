"""PostgreSQL connections of the aggregator and the query API (asyncpg)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg

from ..instrumentation.settings import Settings, require


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


Service = Literal["aggregator", "api", "admin"]
"""Who connects: each service has its own URL setting (falling back to ``postgres_url``)."""


def service_url(settings: Settings, service: Service) -> str:
    """The PostgreSQL URL ``service`` connects with (``admin``: migrations, tools, tests)."""
    if service == "aggregator" and settings.aggregator_postgres_url:
        return settings.aggregator_postgres_url
    if service == "api" and settings.api_postgres_url:
        return settings.api_postgres_url
    return str(require(settings.postgres_url, "postgres_url"))


def connect_kwargs(settings: Settings, service: Service = "admin") -> dict[str, Any]:
    return {
        "dsn": service_url(settings, service),
        "server_settings": {"search_path": f"{settings.postgres_schema},public"},
        "init": _init_connection,
    }


ConnectionHook = Callable[[asyncpg.Connection], Awaitable[None]]


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (a round trip that would also be paid per batch)."""


async def create_pool(
    settings: Settings,
    service: Service,
    *,
    min_size: int = 1,
    max_size: int = 4,
    setup_session: ConnectionHook | None = None,
) -> asyncpg.Pool:
    """A pool whose connections see the analytics schema first on their search path.

    ``setup_session`` runs once on every new connection (e.g. creating its temporary tables);
    with it, released connections keep their session state (no ``RESET ALL`` on release), so
    whatever it set up stays for the connection's lifetime.
    """
    kwargs = connect_kwargs(settings, service)
    if setup_session is None:
        return await asyncpg.create_pool(min_size=min_size, max_size=max_size, **kwargs)
    base_init = kwargs.pop("init")

    async def init(conn: asyncpg.Connection) -> None:
        await base_init(conn)
        await setup_session(conn)

    return await asyncpg.create_pool(
        min_size=min_size, max_size=max_size, init=init, reset=_keep_session, **kwargs
    )


async def connect(settings: Settings, service: Service = "admin") -> asyncpg.Connection:
    kwargs = connect_kwargs(settings, service)
    init = kwargs.pop("init")
    conn = await asyncpg.connect(**kwargs)
    await init(conn)
    return conn
