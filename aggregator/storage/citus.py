"""``migrate --distribute``: the citus variant's per-learner tables distributed by ``user_hash``.

Run on the Citus coordinator after ``migrate`` (docs/scaling-postgres.md). Refuses, changing
nothing, unless the database has the ``citus`` extension and the schema was migrated as the
``citus`` variant. Then, in co-location order (:data:`.variant.DISTRIBUTED_TABLES`), every
per-learner table not distributed yet becomes a distributed table (the first alone, the others
``colocate_with`` it: one learner's rows of every table on one shard); the system-wide tables
and ``analytics_system_events`` stay local to the coordinator. Safe to run again.

Citus connects to the workers as the current (``SET ROLE``) user, so the service roles that
touch distributed tables (:func:`login_roles`) get ``LOGIN`` here (Citus 13 propagates ``ALTER
ROLE`` to every node); each worker's ``pg_hba.conf`` must let them in from the coordinator (an
authentication method the coordinator can satisfy: ``trust`` on a private network, or
``scram-sha-256`` with their passwords in the coordinator's ``.pgpass``, see
``citus.node_conninfo``).
"""

from __future__ import annotations

import asyncpg

from ...instrumentation.settings_base import ConfigurationError
from .db import connect
from .settings import PostgresSettings
from .variant import DISTRIBUTED_TABLES, VariantMismatch, recorded_variant


class CitusUnavailable(ConfigurationError):
    """The database has no ``citus`` extension: nothing to distribute with (exit 2)."""


async def citus_version(conn: asyncpg.Connection) -> str | None:
    """The installed ``citus`` extension's version, ``None`` without it."""
    value = await conn.fetchval("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus'")
    return None if value is None else str(value)


def login_roles(settings: PostgresSettings, exporter_role: str) -> tuple[str, ...]:
    """The roles that ``SET ROLE`` and then read or write distributed tables, so Citus logs in to
    the workers as them: the aggregator's, the API's (rollups, the ``analysis_events`` view), the
    erasure role's (``learner export|erase`` delete a learner's rows) and the warehouse exporter's
    (``exporter_role``). Not the rebuild role: ``rollups rebuild`` refuses the citus variant."""
    return (
        settings.postgres_aggregator_role,
        settings.postgres_api_role,
        settings.postgres_erasure_role,
        exporter_role,
    )


def distribute_statements(distributed: set[str]) -> list[str]:
    """The ``create_distributed_table`` calls still to issue, in co-location order."""
    first = DISTRIBUTED_TABLES[0]
    out = []
    for table in DISTRIBUTED_TABLES:
        if table in distributed:
            continue
        colocate = "" if table == first else f", colocate_with => '{first}'"
        out.append(f"SELECT create_distributed_table('{table}', 'user_hash'{colocate})")
    return out


async def distribute(settings: PostgresSettings, roles: tuple[str, ...]) -> list[str]:
    """Distribute the per-learner tables (see the module docstring); returns the statements run.

    ``roles``: the service roles that get ``LOGIN`` (:func:`login_roles`). The variant is checked
    before the extension, so both refusals can be met (and are tested) on plain PostgreSQL.
    """
    conn = await connect(settings)
    try:
        recorded = await recorded_variant(conn)
        if recorded != "citus":
            raise VariantMismatch(
                f"schema {settings.postgres_schema!r} was migrated as the {recorded!r} variant: "
                "only the citus variant can be distributed (docs/scaling-postgres.md)"
            )
        if await citus_version(conn) is None:
            raise CitusUnavailable(
                f"database {await conn.fetchval('SELECT current_database()')!r} has no citus extension: "
                "run `migrate --distribute` on a Citus coordinator (CREATE EXTENSION citus first)"
            )
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            settings.postgres_schema,
        )
        statements = [f'ALTER ROLE "{role}" LOGIN' for role in roles]
        statements += distribute_statements({r[0] for r in rows})
        for statement in statements:
            await conn.execute(statement)
        return statements
    finally:
        await conn.close()
