"""``studyin-analytics aggregator|api --wait-for-services SECONDS``: start-up waits for its servers.

Started before Redis or PostgreSQL (or before ``migrate`` created its role and tables), the
aggregator used to exit 1 and needed a supervisor to try again; so did the query API, which
needs PostgreSQL at start-up (its Redis clients connect when first used). With a wait a
service starts once its servers are ready, or fails after the wait with the same one-line error
as without it. Used by the systemd units, the Kubernetes manifest and the demo (for servers it
did not start itself). The gateway needs no wait: it starts without Redis and answers 503 until
Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ...exporter.connection import async_client
from ...instrumentation.settings_base import ConfigurationError
from ..storage.db import Service, check_login, connect, service_url
from .availability import POSTGRES, REDIS, describe, server_of
from .retry import is_transient
from .settings import AggregatorSettings as Settings

_log = logging.getLogger(__name__)

WAIT_INTERVAL_S = 0.5
WAIT_INTERVAL_MAX_S = 5.0
CHECK_TIMEOUT_S = 10.0


class NotReady(ConfigurationError):
    """PostgreSQL answers but its schema is not migrated (yet): if still so when the wait ends,
    a configuration error (exit 2), as when the aggregator starts without waiting."""


async def _redis_answers(settings: Settings) -> None:
    client = async_client(settings, socket_timeout=5, socket_connect_timeout=5)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _postgres_ready(settings: Settings, service: Service) -> None:
    """The service's login and role work and the analytics schema is migrated."""
    conn = await connect(settings, service)  # a missing role: ConfigurationError
    try:
        if await conn.fetchval("SELECT to_regclass('analytics_events')") is None:
            raise NotReady(
                f"schema {settings.postgres_schema!r} has no analytics tables: "
                "run `studyin-analytics migrate` first"
            )
    finally:
        await conn.close()


def _worth_waiting(exc: Exception) -> bool:
    """Errors that start-up order explains: a server not up yet, or not migrated yet (the
    migration creates the aggregator's role and tables). A refused password is not one."""
    return is_transient(exc) or isinstance(exc, ConfigurationError)


async def wait_for_services(
    settings: Settings, timeout_s: float, *, migrated: bool = True, service: Service = "aggregator"
) -> None:
    """Wait until Redis answers and PostgreSQL is ready for ``service``, at most ``timeout_s``.

    Waited out: a server unreachable, starting up or shutting down, and a PostgreSQL whose
    schema or aggregator role the migration has not created yet (``migrate`` may run at the
    same time, as in the Kubernetes manifest). A refused login or any other error is raised at
    once, and so is the last error once the time is up (the CLI exits 1 naming the server, or
    2 with the missing role). One line when waiting for a server starts, one when it answers.
    Not ``migrated``: PostgreSQL only has to accept the admin login (the demo, which migrates).
    The ``api`` waits for PostgreSQL only (its login, the schema migrated).
    """
    deadline = time.monotonic() + timeout_s
    postgres_url = server_of(service_url(settings, service if migrated else "admin"))
    checks: list[tuple[str, str, Callable[[], Awaitable[None]]]] = [
        (
            POSTGRES,
            postgres_url,
            lambda: _postgres_ready(settings, service) if migrated else check_login(settings, "admin"),
        ),
    ]
    if service != "api":
        checks.insert(0, (REDIS, server_of(settings.redis_url or ""), lambda: _redis_answers(settings)))
    for name, where, check in checks:
        interval = WAIT_INTERVAL_S
        waiting_since: float | None = None
        while True:
            try:
                await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_S)  # a silent host: TimeoutError
                break
            except Exception as exc:
                remaining = deadline - time.monotonic()
                if not _worth_waiting(exc) or remaining <= 0:
                    raise
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    _log.warning(
                        "waiting for %s at %s (%s), at most %.0f s more",
                        name,
                        where,
                        describe(exc),
                        deadline - waiting_since,
                    )
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 2, WAIT_INTERVAL_MAX_S)
        if waiting_since is not None:
            _log.info("%s at %s answers after %.1f s", name, where, time.monotonic() - waiting_since)
