"""PostgreSQL connections of the aggregator and the query API (asyncpg).

Each service runs with its own role (least privilege, revision 0004): connections of the
``aggregator`` and ``api`` services set ``role`` as a startup parameter, i.e. as the session
default. ``RESET ALL`` (the pool's reset on release) leaves ``role`` alone and ``RESET ROLE``
returns to it, so no pooled connection ever runs as the login user. The login user must be
that role or a member of it; ``admin`` (migrations, tools, tests, benchmarks) keeps the login
user's own rights.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg

from ...instrumentation.settings_base import ENV_PREFIX, ConfigurationError, redact_url, require
from .settings import PostgresSettings


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


Service = Literal["aggregator", "api", "erasure", "admin"]
"""Who connects: each service has its own URL setting (falling back to ``postgres_url``)."""


def service_url(settings: PostgresSettings, service: Service) -> str:
    """The PostgreSQL URL ``service`` connects with (``admin``: migrations, tools, tests)."""
    if service == "aggregator" and settings.aggregator_postgres_url:
        return settings.aggregator_postgres_url
    if service == "api" and settings.api_postgres_url:
        return settings.api_postgres_url
    if service == "erasure" and (settings.erasure_postgres_url or settings.api_postgres_url):
        # The API's staff endpoints erase with the API's own login (a member of the erasure role).
        return str(settings.erasure_postgres_url or settings.api_postgres_url)
    return str(require(settings.postgres_url, "postgres_url"))


def service_role(settings: PostgresSettings, service: Service) -> str | None:
    """The role ``service`` runs as (``None``: the login user's own, for ``admin``)."""
    if service == "aggregator":
        return settings.postgres_aggregator_role
    if service == "api":
        return settings.postgres_api_role
    if service == "erasure":
        return settings.postgres_erasure_role
    return None


def connect_kwargs(settings: PostgresSettings, service: Service = "admin") -> dict[str, Any]:
    server_settings = {"search_path": f"{settings.postgres_schema},public"}
    role = service_role(settings, service)
    if role is not None:
        server_settings["role"] = role
    return {
        "dsn": service_url(settings, service),
        "server_settings": server_settings,
        "init": _init_connection,
    }


def _role_error(settings: PostgresSettings, service: Service, exc: Exception) -> ConfigurationError:
    """Why the login user could not assume the service's role, naming the settings to fix."""
    role_field = f"postgres_{service}_role"
    return ConfigurationError(
        f"the login user of {url_setting(settings, service)} ({redact_url(service_url(settings, service))}) "
        f"cannot assume role {service_role(settings, service)!r} ({ENV_PREFIX}{role_field.upper()}): {exc}. "
        "Run `studyin-analytics migrate` (it creates the role) and make the login user a member "
        f"(GRANT {service_role(settings, service)} TO <login user>)"
    )


def _is_role_error(exc: Exception) -> bool:
    # At start-up PostgreSQL reports "permission denied to set role" (42501) or "role ... does
    # not exist" (22023, invalid parameter value: the startup parameter ``role``).
    return isinstance(exc, asyncpg.InsufficientPrivilegeError | asyncpg.InvalidParameterValueError) and (
        "role" in str(exc)
    )


ConnectionHook = Callable[[asyncpg.Connection], Awaitable[None]]


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (a round trip that would also be paid per batch)."""


async def create_pool(
    settings: PostgresSettings,
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
    extra: dict[str, Any] = {}
    if setup_session is not None:
        base_init = kwargs.pop("init")

        async def init(conn: asyncpg.Connection) -> None:
            await base_init(conn)
            await setup_session(conn)

        extra = {"init": init, "reset": _keep_session}
    try:
        return await asyncpg.create_pool(min_size=min_size, max_size=max_size, **kwargs, **extra)
    except Exception as exc:
        if _is_role_error(exc):
            raise _role_error(settings, service, exc) from exc
        raise


def url_setting(settings: PostgresSettings, service: Service) -> str:
    """The variable that holds the URL ``service`` connects with (for error messages)."""
    if service != "admin" and getattr(settings, f"{service}_postgres_url"):
        return f"{ENV_PREFIX}{service.upper()}_POSTGRES_URL"
    if service == "erasure" and settings.api_postgres_url:
        return f"{ENV_PREFIX}API_POSTGRES_URL"
    return f"{ENV_PREFIX}POSTGRES_URL"


async def check_login(settings: PostgresSettings, service: Service) -> None:
    """Connect once as ``service`` and close: start-up fails fast, with asyncpg's own error."""
    conn = await connect(settings, service)
    await conn.close()


async def connect(settings: PostgresSettings, service: Service = "admin") -> asyncpg.Connection:
    kwargs = connect_kwargs(settings, service)
    init = kwargs.pop("init")
    try:
        conn = await asyncpg.connect(**kwargs)
    except Exception as exc:
        if _is_role_error(exc):
            raise _role_error(settings, service, exc) from exc
        raise
    await init(conn)
    return conn
