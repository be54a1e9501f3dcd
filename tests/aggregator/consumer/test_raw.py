"""The raw tables per schema variant (consumer/raw.py): the split, the probes, duplicates.

The citus variant runs here in every test run (``citus_migrated``), whatever
``STUDYIN_TEST_SCHEMA_VARIANT`` says; ``STUDYIN_TEST_SCHEMA_VARIANT=citus`` runs the whole suite on it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer import raw, rollups
from studyin_analytics.aggregator.consumer.mapping import RawRecord, raw_records, rows_from_span
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import ensure_partitions
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import dead_letter_key, stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.raw import raw_count
from tests.support.workload import Workload, build, mismatches, push, truth_of

# --- server-free ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_duplicates_are_recognised_as_postgresql_and_citus_report_them() -> None:
    citus = asyncpg.exceptions.InternalServerError(
        'duplicate key value violates unique constraint "analytics_events_pkey_102008"'
    )
    assert citus.sqlstate == "XX000"
    assert raw.is_duplicate_key(citus)
    assert raw.is_duplicate_key(asyncpg.UniqueViolationError("duplicate key value"))
    assert not raw.is_duplicate_key(asyncpg.exceptions.InternalServerError("could not connect to worker"))
    assert not raw.is_duplicate_key(asyncpg.exceptions.DataError(raw.DUPLICATE_TEXT))
    assert not raw.is_duplicate_key(ValueError(raw.DUPLICATE_TEXT))


def _record(user: str | None, n: int) -> RawRecord:
    return (uuid.UUID(int=n), datetime(2026, 12, 3, tzinfo=UTC), "x", user, None, "{}")


@pytest.mark.unit
@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([None, "h1", "h2"]), st.integers(0, 1000)), max_size=30))
def test_split_keeps_every_record_once_in_order(pairs: list[tuple[str | None, int]]) -> None:
    records = [_record(user, n) for user, n in pairs]
    with_learner, without = raw.split(records)
    assert with_learner == [r for r in records if r[3] is not None]
    assert without == [r for r in records if r[3] is None]


# --- the citus variant on plain PostgreSQL --------------------------------------------------------


def _records(wl: Workload) -> list[RawRecord]:
    return raw_records(
        [row for fields in wl.entries for rec in wire.decode_entry(fields) for row in rows_from_span(rec)]
    )


async def test_citus_variant_rollups_equal_ground_truth_with_duplicates(citus_migrated: Settings) -> None:
    settings = citus_migrated.with_overrides(batch_size=7)
    wl = build(Pseudonymizer.from_settings(settings), users=40, seed=5)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries + wl.entries[::3])
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
    assert totals.events_inserted == wl.event_count and totals.dead_lettered == 0
    learnerless = sum(1 for e in wl.events if e.user is None)
    assert learnerless > 0, "the workload must have API requests without a learner"
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
        assert await conn.fetchval("SELECT count(*) FROM analytics_system_events") == learnerless
        assert await conn.fetchval("SELECT count(*) FROM analytics_events WHERE user_hash IS NULL") == 0
        assert await raw_count(conn) == wl.event_count
    finally:
        await conn.close()


async def test_probes_find_stored_events_of_both_raw_tables(citus_migrated: Settings) -> None:
    wl = build(Pseudonymizer.from_settings(citus_migrated), users=10, seed=9)
    records = _records(wl)
    stored, fresh = records[::2], records[1::2]
    conn = await connect(citus_migrated)
    try:
        await rollups.setup_connection(conn)  # JSON text for jsonb, as the aggregator's connections
        await ensure_partitions(conn, {r[1].date() for r in records}, set())
        async with conn.transaction():
            await raw.copy_raw(conn, stored, "citus")
        async with conn.transaction():
            found = await rollups.stored_event_ids(conn, records, "citus")
        assert found == {r[0] for r in stored}
        assert {r[0] for r in fresh}.isdisjoint(found)
        assert any(r[3] is None for r in stored) and any(r[3] is not None for r in stored)
        # The keyed probe seeks the primary key from its first column (as stored_event_ids plans
        # it: nested loops); without user_hash, the index is read whole for every probe (62-107 s
        # per 10k probes on the keyed table, measured).
        keyed = [r for r in stored if r[3]][:50]
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            await conn.execute("ANALYZE analytics_events")
            plan = await conn.fetch(
                "EXPLAIN " + raw._PROBE_BY_LEARNER,
                [r[3] for r in keyed],
                [r[0] for r in keyed],
                [r[1] for r in keyed],
            )
        assert "Index Cond: ((user_hash = n.user_hash)" in "\n".join(r[0] for r in plan)
    finally:
        await conn.close()


_CITUS_DUPLICATE = """
CREATE FUNCTION citus_like_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM analytics_events WHERE user_hash = NEW.user_hash
               AND event_id = NEW.event_id AND occurred_at = NEW.occurred_at) THEN
        RAISE EXCEPTION 'duplicate key value violates unique constraint "analytics_events_pkey_102040"'
            USING ERRCODE = 'XX000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER citus_like_duplicate BEFORE INSERT ON analytics_events
    FOR EACH ROW EXECUTE FUNCTION citus_like_duplicate();
"""
"""Stored events reported as Citus's COPY reports them (SQLSTATE XX000), not as 23505."""


async def test_citus_duplicate_error_retries_in_place(citus_migrated: Settings) -> None:
    settings = citus_migrated.with_overrides(batch_size=5)
    owner = await connect(settings)
    try:
        await rollups.setup_connection(owner)
        await owner.execute(_CITUS_DUPLICATE)
        wl = build(Pseudonymizer.from_settings(settings), users=20, seed=11)
        records = _records(wl)
        await ensure_partitions(owner, {r[1].date() for r in records}, set())
        async with Aggregator(settings) as aggregator:
            assert await aggregator._commit(records[:40], None, careful=False) == 40
            with pytest.raises(asyncpg.exceptions.InternalServerError):  # the trigger works
                async with owner.transaction():
                    await raw.copy_raw(owner, [r for r in records[:40] if r[3]][:1], "citus")
            # Stored events met by a plain COPY: retried the careful way in the same call.
            assert await aggregator._commit(records, None, careful=False) == len(records) - 40
    finally:
        await owner.close()


async def test_citus_duplicates_end_to_end_leave_no_dead_letter(
    citus_migrated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = citus_migrated.with_overrides(batch_size=5)
    owner = await connect(settings)
    try:
        await owner.execute(_CITUS_DUPLICATE)
    finally:
        await owner.close()
    wl = build(Pseudonymizer.from_settings(settings), users=30, seed=13)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries + wl.entries[::2])
    caplog.set_level(logging.INFO, logger="studyin_analytics")
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
    assert totals.dead_lettered == 0 and totals.events_inserted == wl.event_count
    assert "retrying entries alone" not in caplog.text
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
    finally:
        await conn.close()
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        assert client.xlen(dead_letter_key(settings)) == 0
    finally:
        client.close()
