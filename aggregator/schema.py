"""Schema management: migrations (alembic) and daily partitions of ``analytics_events``.

The DDL itself lives in the alembic revisions under ``migrations/versions``; this module
runs them and owns the partition calendar.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config

from ..instrumentation.settings import Settings, require

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
EVENTS_TABLE = "analytics_events"
PARTITION_LOCK_ID = 0x5374_7564_7949_6E01


def sqlalchemy_url(postgres_url: str) -> str:
    """The asyncpg SQLAlchemy URL for a plain ``postgresql://`` URL."""
    _scheme, sep, rest = postgres_url.partition("://")
    if not sep:
        raise ValueError("postgres URL must look like postgresql://user@host/db")
    return f"postgresql+asyncpg://{rest}"


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["schema"] = settings.postgres_schema
    config.attributes["sqlalchemy_url"] = sqlalchemy_url(require(settings.postgres_url, "postgres_url"))
    return config


def migrate(settings: Settings, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (blocking; safe to run twice and concurrently)."""
    command.upgrade(alembic_config(settings), revision)


def partition_name(day: date) -> str:
    return f"{EVENTS_TABLE}_p{day:%Y%m%d}"


async def ensure_partitions(conn: asyncpg.Connection, days: set[date], known: set[date]) -> None:
    """Create the daily partitions in ``days`` that are not in ``known`` (a per-process cache)."""
    missing = sorted(days - known)
    if not missing:
        return
    async with conn.transaction():
        # Concurrent aggregators: serialize creation so CREATE ... IF NOT EXISTS cannot race.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
        for day in missing:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            end = start + timedelta(days=1)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {EVENTS_TABLE} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
    known.update(missing)
