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

from ...exporter.admission import oldest_day
from ...instrumentation.settings_base import require
from .settings import PostgresSettings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
EVENTS_TABLE = "analytics_events"
MIGRATION_LOCK_ID = 0x5374_7564_7949_6E00
"""Advisory lock of every migration run ("StudyIn\\0": fits a signed bigint); also taken by anything
else that changes database-level grants, which PostgreSQL cannot update concurrently ("tuple
concurrently updated")."""
PARTITION_LOCK_ID = 0x5374_7564_7949_6E01
PARTITIONS_AHEAD = 3
"""Daily partitions kept created ahead of today by the aggregator's maintenance, and the last
day any partition may be created for (events later than ``max_event_future_s``, at most a day,
are dead-lettered before they need one)."""


class PartitionOutOfWindow(ValueError):
    """A partition asked for outside the bounded window of days (a bug upstream: never created)."""


def alembic_config(settings: PostgresSettings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["schema"] = settings.postgres_schema
    config.attributes["aggregator_role"] = settings.postgres_aggregator_role
    config.attributes["api_role"] = settings.postgres_api_role
    config.attributes["rebuild_role"] = settings.postgres_rebuild_role  # revision 0016_rebuild
    config.attributes["erasure_role"] = settings.postgres_erasure_role  # revision 0022_erasure_finish
    config.attributes["schema_variant"] = settings.postgres_schema_variant  # 0017_citus_variant
    from ..warehouse.settings import ExportSettings, catalog_schema  # revision 0009_export

    export = ExportSettings()
    config.attributes["exporter_role"] = export.postgres_role
    config.attributes["export_catalog_schema"] = catalog_schema(settings, export)
    # The libpq-style URL as given (sslmode, sslrootcert...): env.py hands it to asyncpg itself,
    # since SQLAlchemy's asyncpg dialect would pass such parameters on as unknown arguments.
    config.attributes["postgres_url"] = require(settings.postgres_url, "postgres_url")
    return config


def migrate(settings: PostgresSettings, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (blocking; safe to run twice and concurrently)."""
    command.upgrade(alembic_config(settings), revision)


def partition_name(day: date) -> str:
    return f"{EVENTS_TABLE}_p{day:%Y%m%d}"


async def ensure_partitions(
    conn: asyncpg.Connection,
    days: set[date],
    known: set[date],
    *,
    oldest: date | None = None,
    today: date | None = None,
) -> None:
    """Create the daily partitions in ``days`` that are not in ``known`` (a per-process cache).

    Only inside a bounded window of days: none after ``today + PARTITIONS_AHEAD`` and, with
    ``oldest`` (the first day of raw retention), none before; a day outside raises
    :class:`PartitionOutOfWindow` and nothing is created. So however many days the events of a
    batch span, the table has at most ``raw_retention_days + PARTITIONS_AHEAD + 2`` partitions
    (the aggregator passes the day before raw retention as ``oldest``).

    Through ``create_events_partition`` (revision 0004): creating a partition needs ownership of
    the table, which the aggregator's role does not have; the function (SECURITY DEFINER) does.
    """
    missing = sorted(days - known)
    if not missing:
        return
    last = (today or datetime.now(UTC).date()) + timedelta(days=PARTITIONS_AHEAD)
    outside = [day for day in missing if day > last or (oldest is not None and day < oldest)]
    if outside:
        raise PartitionOutOfWindow(
            f"no partition is created outside {oldest or '-'} .. {last}: asked for {outside[0]}"
            + (f" and {len(outside) - 1} more days" if len(outside) > 1 else "")
        )
    async with conn.transaction():
        # Concurrent aggregators: serialize creation so CREATE ... IF NOT EXISTS cannot race.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
        await conn.execute("SELECT create_events_partition(d) FROM unnest($1::date[]) AS d", missing)
    known.update(missing)


def partition_days_ahead(today: date, days_ahead: int = PARTITIONS_AHEAD) -> set[date]:
    """Yesterday, today and ``days_ahead`` days after (what maintenance keeps created)."""
    return {today + timedelta(days=offset) for offset in range(-1, days_ahead + 1)}


async def existing_partitions(conn: asyncpg.Connection) -> dict[date, str]:
    """Daily partitions of the raw events table, by day."""
    records = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        EVENTS_TABLE,
    )
    out: dict[date, str] = {}
    prefix = f"{EVENTS_TABLE}_p"
    for record in records:
        name: str = record["relname"]
        if name.startswith(prefix):
            try:
                out[datetime.strptime(name[len(prefix) :], "%Y%m%d").date()] = name
            except ValueError:
                continue
    return out


async def drop_expired_partitions(
    conn: asyncpg.Connection, retention_days: int, known: set[date], today: date | None = None
) -> list[str]:
    """Drop daily partitions entirely older than ``retention_days`` (raw retention, no DELETE).

    Through ``drop_events_partition`` (revision 0004), which refuses the last two UTC days.
    """
    today = today or datetime.now(UTC).date()
    cutoff = oldest_day(retention_days, today)
    dropped: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
        await conn.execute("SET LOCAL lock_timeout = '5s'")
        for day, name in sorted((await existing_partitions(conn)).items()):
            if day < cutoff:
                if await conn.fetchval("SELECT drop_events_partition($1)", day):
                    dropped.append(name)
                known.discard(day)
    return dropped
