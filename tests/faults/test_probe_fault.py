"""A transient PostgreSQL error during the stored-events probe is retried, never dead-lettered.

The probe (``rollups.stored_event_ids``) runs inside the batch transaction. A statement that
fails there leaves the transaction aborted; anything the probe ran afterwards (it used to reset
its ``SET LOCAL`` in a ``finally``) would fail with ``InFailedSQLTransactionError`` and hide
the real error, which the aggregator then took for a data error: the entries were retried
alone and dead-lettered within seconds. The failure is injected for real: the probe is held
on a lock taken by another connection and cancelled from a third one (``pg_cancel_backend``:
``QueryCanceledError``, the server's "try again later"), while the session and its
transaction stay open, as with a coordinator that lost a worker for a moment. The
end-to-end test also terminates the probing backends (``pg_terminate_backend``: the connection
itself fails, the aggregator drops its pool and reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date
from typing import Any

import asyncpg
import pytest
import redis

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer import rollups
from studyin_analytics.aggregator.consumer.mapping import raw_records, rows_from_span
from studyin_analytics.aggregator.consumer.raw import PROBE_MARK
from studyin_analytics.aggregator.consumer.service import is_transient
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import ensure_partitions, existing_partitions
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import dead_letter_key, stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.workload import Workload, build, mismatches, push, truth_of

_PROBE_MARK = PROBE_MARK  # opens every stored-events probe, on both schema variants
CHAOS_S = 6.0
"""How long every probe is cancelled (the entries were dead-lettered in about 7 s before the fix)."""


def _workload(settings: Settings) -> Workload:
    return build(Pseudonymizer.from_settings(settings), users=20, seed=7, spans_per_entry=10)


def _days(wl: Workload) -> set[date]:
    return {r[1].date() for fields in wl.entries for r in _records(fields)}


def _records(fields: dict[Any, Any]) -> list[Any]:
    return raw_records([row for rec in wire.decode_entry(fields) for row in rows_from_span(rec)])


async def _cancel_probes(
    settings: Settings, until: asyncio.Event, cancelled: list[int], how: str = "pg_cancel_backend"
) -> None:
    """Hold the raw partitions locked and cancel every probe that waits on them, until ``until``
    (``how``: ``pg_cancel_backend`` cancels the statement, ``pg_terminate_backend`` the connection).

    Only the partitions: the parent stays free for what a new connection of the aggregator
    runs first (its temporary tables are ``LIKE analytics_events``).
    """
    holder = await connect(settings)
    killer = await connect(settings)
    try:
        partitions = sorted((await existing_partitions(holder)).values())
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {', '.join(partitions)} IN ACCESS EXCLUSIVE MODE")
            while not until.is_set():
                pids = await killer.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND position($1 in query) > 0",
                    _PROBE_MARK,
                )
                for row in pids:
                    if await killer.fetchval(f"SELECT {how}($1)", row["pid"]):
                        cancelled.append(row["pid"])
                await asyncio.sleep(0.02)
    finally:
        await holder.close()
        await killer.close()


async def test_a_cancelled_probe_raises_its_own_transient_error(migrated: Settings) -> None:
    wl = _workload(migrated)
    records = _records(wl.entries[0])
    conn = await connect(migrated)
    await ensure_partitions(conn, _days(wl), set())
    stop, cancelled = asyncio.Event(), list[int]()
    chaos = asyncio.create_task(_cancel_probes(migrated, stop, cancelled))
    try:
        await asyncio.sleep(0.3)  # the lock is held
        with pytest.raises(asyncpg.PostgresError) as caught:
            async with conn.transaction():
                await rollups.stored_event_ids(conn, records, migrated.postgres_schema_variant)
    finally:
        stop.set()
        await chaos
        await conn.close()
    assert cancelled, "the probe was never held on the lock"
    # Before the fix: InFailedSQLTransactionError (not transient), from the reset in the finally.
    assert isinstance(caught.value, asyncpg.QueryCanceledError), repr(caught.value)
    assert is_transient(caught.value)


@pytest.mark.parametrize("how", ["pg_cancel_backend", "pg_terminate_backend"])
async def test_redelivered_entries_survive_cancelled_probes_and_are_not_dead_lettered(
    migrated: Settings, how: str
) -> None:
    settings = migrated.with_overrides(max_delivery_attempts=3)
    wl = _workload(settings)
    stream = stream_keys(settings)[0]
    push(settings.redis_url or "", stream, wl.entries)
    conn = await connect(settings)
    try:  # the probe, not partition creation, must be what waits on the lock
        await ensure_partitions(conn, _days(wl), set())
    finally:
        await conn.close()
    # A previous life of this consumer read every entry and died: they are redelivered, and a
    # redelivered batch probes for stored events first.
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        client.xgroup_create(stream, settings.consumer_group, id="0")
        client.xreadgroup(settings.consumer_group, settings.consumer_name, {stream: ">"}, count=10_000)
    finally:
        client.close()

    stop_chaos, cancelled = asyncio.Event(), list[int]()
    chaos = asyncio.create_task(_cancel_probes(settings, stop_chaos, cancelled, how))
    stop = asyncio.Event()
    async with Aggregator(settings) as agg:
        runner = asyncio.create_task(agg.run(stop))
        try:
            # Every probe fails for several seconds and at least 8 times: far more failures than
            # max_delivery_attempts (counted, not timed: backoff and a loaded machine space them out).
            await asyncio.sleep(CHAOS_S)
            for _ in range(600):
                if len(cancelled) >= 8:
                    break
                await asyncio.sleep(0.1)
        finally:
            stop_chaos.set()
            await chaos
        try:
            for _ in range(600):
                if await agg.lag() == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 30)
    assert len(cancelled) >= 8, cancelled
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        dead = client.xlen(dead_letter_key(settings, stream))
    finally:
        client.close()
    assert dead == 0, "entries were dead-lettered after a transient error"
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
    finally:
        await conn.close()
