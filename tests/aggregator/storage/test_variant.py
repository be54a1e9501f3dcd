"""The schema variant (storage/variant.py, revision 0017_citus_variant): recorded, enforced, reversible."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import (
    drop_expired_partitions,
    ensure_partitions,
    existing_partitions,
    migrate,
)
from studyin_analytics.aggregator.storage.variant import VariantMismatch, mismatch, recorded_variant

_PK = (
    "SELECT ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(n, i) "
    "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i) "
    "FROM pg_constraint con WHERE con.conrelid = $1::regclass AND con.contype = 'p'"
)


@pytest.mark.unit
def test_a_mismatch_names_the_variable_and_the_recorded_variant() -> None:
    assert mismatch("s", "plain", "plain") is None
    error = mismatch("s", "citus", "plain")
    assert isinstance(error, VariantMismatch)
    assert "STUDYIN_ANALYTICS_POSTGRES_SCHEMA_VARIANT" in str(error) and "'citus'" in str(error)


async def test_citus_variant_keys_raw_events_by_learner(citus_migrated: Settings) -> None:
    conn = await connect(citus_migrated)
    try:
        assert await recorded_variant(conn) == "citus"
        assert await conn.fetchval(_PK, "analytics_events") == ["user_hash", "event_id", "occurred_at"]
        assert await conn.fetchval(_PK, "analytics_system_events") == ["event_id", "occurred_at"]
        assert await conn.fetchval(_PK, "learning_sessions") == ["user_hash", "session_id"]
        assert await conn.fetchval(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'analytics_events'::regclass "
            "AND attname = 'user_hash'"
        )
    finally:
        await conn.close()


async def test_plain_variant_is_recorded_and_unchanged(settings: Settings) -> None:
    plain = settings.with_overrides(postgres_schema_variant="plain")
    await asyncio.to_thread(migrate, plain)
    conn = await connect(plain)
    try:
        assert await recorded_variant(conn) == "plain"
        assert await conn.fetchval(_PK, "analytics_events") == ["event_id", "occurred_at"]
        assert await conn.fetchval("SELECT to_regclass('analytics_system_events')") is None
    finally:
        await conn.close()


async def test_another_variant_is_refused_by_migrate_and_the_aggregator(citus_migrated: Settings) -> None:
    plain = citus_migrated.with_overrides(postgres_schema_variant="plain")
    with pytest.raises(VariantMismatch, match="migrated as the 'citus' variant"):
        await asyncio.to_thread(migrate, plain)
    with pytest.raises(VariantMismatch, match="POSTGRES_SCHEMA_VARIANT is 'plain'"):
        async with Aggregator(plain):
            pass
    async with Aggregator(citus_migrated):  # the recorded one starts
        pass


async def test_partition_functions_create_and_drop_both_raw_tables(citus_migrated: Settings) -> None:
    today = datetime.now(UTC).date()
    old = today - timedelta(days=40)
    conn = await connect(citus_migrated)
    try:
        await ensure_partitions(conn, {today, old}, set(), today=today)
        names = {r[0] for r in await conn.fetch("SELECT relname FROM pg_class WHERE relname LIKE '%_p2%'")}
        for day in (today, old):
            assert {f"analytics_events_p{day:%Y%m%d}", f"analytics_system_events_p{day:%Y%m%d}"} <= names
        dropped = await drop_expired_partitions(conn, 30, set(), today=today)
        assert dropped == [f"analytics_events_p{old:%Y%m%d}"]
        assert await conn.fetchval("SELECT to_regclass($1)", f"analytics_system_events_p{old:%Y%m%d}") is None
        assert set(await existing_partitions(conn)) == {today}
    finally:
        await conn.close()


async def test_upgrade_moves_stored_events_and_downgrade_restores_them(citus_settings: Settings) -> None:
    """A plain schema at 0010 with events with and without a learner, migrated as citus and back."""
    await asyncio.to_thread(migrate, citus_settings, "0010_analysis")
    day = date.today()
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    rows = [(uuid.uuid4(), at, "material_view", f"h{i % 3}" if i % 4 else None) for i in range(40)]
    conn = await connect(citus_settings)
    try:
        await ensure_partitions(conn, {day}, set())
        await conn.executemany(
            "INSERT INTO analytics_events (event_id, occurred_at, event_type, user_hash) "
            "VALUES ($1, $2, $3, $4)",
            rows,
        )
        before = {
            tuple(r) for r in await conn.fetch("SELECT event_id, user_hash, stored_xid FROM analytics_events")
        }
        await asyncio.to_thread(migrate, citus_settings)
        keyed = await conn.fetch("SELECT event_id, user_hash, stored_xid FROM analytics_events")
        local = await conn.fetch("SELECT event_id, user_hash, stored_xid FROM analytics_system_events")
        assert {tuple(r) for r in keyed} | {tuple(r) for r in local} == before
        assert all(r[1] is not None for r in keyed) and all(r[1] is None for r in local)
        assert len(local) == 10
        assert f"analytics_system_events_p{day:%Y%m%d}" in {
            r[0]
            for r in await conn.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'analytics_system%'")
        }
        await asyncio.to_thread(_downgrade, citus_settings, "0010_analysis")
        after = {
            tuple(r) for r in await conn.fetch("SELECT event_id, user_hash, stored_xid FROM analytics_events")
        }
        assert after == before
        assert await conn.fetchval(_PK, "analytics_events") == ["event_id", "occurred_at"]
        assert await conn.fetchval("SELECT to_regclass('analytics_system_events')") is None
        await ensure_partitions(conn, {day + timedelta(days=1)}, set())  # 0004's functions are back
    finally:
        await conn.close()


def _downgrade(settings: Settings, revision: str) -> None:
    from alembic import command

    from studyin_analytics.aggregator.storage.schema import alembic_config

    command.downgrade(alembic_config(settings), revision)
