"""Alembic environment: runs the migrations over asyncpg, in the configured schema.

Safe to run concurrently: every run takes a transaction-scoped advisory lock first, so two
``migrate`` commands serialize and the second finds nothing to do.
"""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from studyin_analytics.aggregator.storage.schema import MIGRATION_LOCK_ID

config = context.config
SCHEMA: str = config.attributes["schema"]
POSTGRES_URL: str = config.attributes["postgres_url"]


def _check_variant(connection: Connection) -> None:
    """A schema migrated as one variant is never migrated on as another (see storage/variant.py)."""
    from studyin_analytics.aggregator.storage.variant import VARIANT_TABLE, mismatch

    if connection.execute(text("SELECT to_regclass(:t)"), {"t": VARIANT_TABLE}).scalar() is None:
        return
    recorded = connection.execute(text(f"SELECT variant FROM {VARIANT_TABLE}")).scalar()
    error = mismatch(SCHEMA, str(recorded), config.attributes.get("schema_variant", "plain"))
    if error is not None:
        raise error


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table_schema=SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
        connection.execute(text(f'SET LOCAL search_path TO "{SCHEMA}", public'))
        _check_variant(connection)
        context.run_migrations()


async def _main() -> None:
    # asyncpg parses the URL (TLS parameters included); SQLAlchemy only wraps the connection.
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(POSTGRES_URL), poolclass=NullPool
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run `studyin-analytics migrate`")
asyncio.run(_main())
