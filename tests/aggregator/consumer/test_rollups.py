"""Rollups against independently computed ground truth (in process), histograms, schema."""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from time import time_ns

import httpx
import pytest
import redis

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer import histogram
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import (
    ensure_partitions,
    existing_partitions,
    partition_days_ahead,
)
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import dead_letter_key, stream_keys
from studyin_analytics.exporter.runtime.health import HealthServer
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.raw import raw_count
from tests.support.workload import build, mismatches, push, truth_of


async def test_rollups_equal_ground_truth_with_duplicates(migrated: Settings) -> None:
    settings = migrated.with_overrides(batch_size=7)
    wl = build(Pseudonymizer.from_settings(settings), users=60, seed=3)
    stream = stream_keys(settings)[0]
    # Every entry twice (retried exports), the second copy later: each event counts once.
    push(settings.redis_url or "", stream, wl.entries + wl.entries[::3])
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
    assert totals.events_inserted == wl.event_count
    assert totals.events_seen > wl.event_count
    conn = await connect(settings)
    try:
        truth = truth_of(wl)
        assert await mismatches(conn, truth) == []
        # The comparison has teeth: one changed number in any rollup is reported.
        for table, column in (
            ("gamification_stats", "xp_total"),
            ("user_activity_hourly", "events"),
            ("system_metrics", "requests"),
            ("hourly_analytics_summary", "active_users"),
            ("ai_coach_metrics", "tokens_in"),
        ):
            tx = conn.transaction()
            await tx.start()
            await conn.execute(
                f"UPDATE {table} SET {column} = {column} + 1 WHERE ctid = (SELECT min(ctid) FROM {table})"
            )
            assert await mismatches(conn, truth) != [], table
            await tx.rollback()
        assert await mismatches(conn, truth) == []
    finally:
        await conn.close()


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def test_histogram_relative_error_bound() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(3, 1.5) for _ in range(20_000)] + [rng.uniform(0.001, 5) for _ in range(500)]
    parts: list[dict[str, int]] = [{}, {}, {}]
    for i, value in enumerate(values):
        histogram.add(parts[i % 3], value)
    merged = histogram.merge(parts)  # per-minute histograms sum to any window
    assert sum(merged.values()) == len(values)
    for q in (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        estimate = histogram.quantile(merged, q)
        exact = _exact(values, q)
        assert estimate is not None
        assert abs(estimate - exact) <= histogram.ALPHA * exact * (1 + 1e-9), (q, estimate, exact)
    assert histogram.quantile({}, 0.5) is None


async def test_system_metrics_percentiles_over_a_window_match_raw_durations(migrated: Settings) -> None:
    settings = migrated
    wl = build(Pseudonymizer.from_settings(settings), users=120, seed=11)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    truth = truth_of(wl)
    conn = await connect(settings)
    try:
        checked = 0
        for (route, method), durations in truth.api_durations.items():
            for q in (0.5, 0.95, 0.99):
                # Summing per-minute histograms over the whole window, in SQL.
                estimate = await conn.fetchval(
                    "SELECT hist_quantile(count_map_sum(latency_hist), $3) FROM system_metrics "
                    "WHERE route = $1 AND method = $2",
                    route,
                    method,
                    q,
                )
                hist = await conn.fetchval(
                    "SELECT count_map_sum(latency_hist) FROM system_metrics WHERE route = $1 AND method = $2",
                    route,
                    method,
                )
                exact = _exact(durations, q)
                assert abs(estimate - exact) <= histogram.ALPHA * exact * (1 + 1e-9), (
                    route,
                    q,
                    estimate,
                    exact,
                )
                assert estimate == pytest.approx(histogram.quantile(hist, q), rel=1e-12)  # SQL == Python
                checked += 1
        assert checked >= 12
    finally:
        await conn.close()


def test_migrate_twice_and_concurrently(settings: Settings) -> None:
    env = {**os.environ, **settings.environment("postgres_url", "postgres_schema")}
    command = [sys.executable, "-m", "studyin_analytics.aggregator.cli", "migrate"]
    procs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    again = subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr.decode()

    async def check() -> None:
        conn = await connect(settings)
        try:
            assert await conn.fetchval("SELECT count(*) FROM alembic_version") == 1
            tables = {
                r[0]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = $1", settings.postgres_schema
                )
            }
            assert {
                "analytics_events",
                "gamification_stats",
                "user_activity_hourly",
                "ai_coach_metrics",
                "system_metrics",
                "hourly_analytics_summary",
            } <= tables
        finally:
            await conn.close()

    asyncio.run(check())


async def test_partitions_created_ahead_and_dropped_after_retention(migrated: Settings) -> None:
    settings = migrated.with_overrides(raw_retention_days=10)
    today = datetime.now(UTC).date()
    conn = await connect(settings)
    try:
        known: set = set()
        await ensure_partitions(conn, {today - timedelta(days=30)}, known)
    finally:
        await conn.close()
    async with Aggregator(settings) as aggregator:
        dropped = await aggregator.maintain()
        assert dropped == [f"analytics_events_p{today - timedelta(days=30):%Y%m%d}"]
        conn = await connect(settings)
        try:
            days = set(await existing_partitions(conn))
        finally:
            await conn.close()
    assert partition_days_ahead(today) <= days
    assert max(days) >= today + timedelta(days=3)
    assert min(days) >= today - timedelta(days=10)


async def test_nogroup_recreates_group_and_health_reports_lag(migrated: Settings) -> None:
    settings = migrated
    wl = build(Pseudonymizer.from_settings(settings), users=10, seed=4)
    stream = stream_keys(settings)[0]
    push(settings.redis_url or "", stream, wl.entries[:2])
    async with Aggregator(settings) as aggregator:
        server = HealthServer(aggregator.status, "127.0.0.1", 0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                response = await http.get("/status")
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/readyz")).status_code == 200
            assert response.status_code == 200
            assert response.json()["lag"] == 2
        finally:
            await server.stop()
        await aggregator.drain(timeout_s=30)
        client = redis.Redis.from_url(settings.redis_url or "")
        try:
            client.xgroup_destroy(stream, settings.consumer_group)  # what a Redis restart may do
        finally:
            client.close()
        push(settings.redis_url or "", stream, wl.entries[2:])
        totals = await aggregator.drain(timeout_s=30)
        status = await aggregator.status()
    assert totals.events_inserted == wl.event_count  # replay from 0 counted nothing twice
    assert status["healthy"] and status["lag"] == 0


async def test_undecodable_and_failing_entries_are_dead_lettered(migrated: Settings) -> None:
    """An undecodable entry is dead-lettered whole; an event PostgreSQL would refuse (a NUL in a
    JSON string) is dead-lettered at once, before any attempt fails
    (tests/aggregator/consumer/test_bad_events.py has an entry mixing good and bad events, and a refusal
    only PostgreSQL knows)."""
    settings = migrated.with_overrides(max_delivery_attempts=2)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    wl = build(pseudonymizer, users=20, seed=8)
    stream = stream_keys(settings)[0]
    entries = [*wl.entries[:3], {b"v": b"1", b"n": b"1", b"d": b"\xc1garbage"}, *wl.entries[3:]]
    entries.insert(
        5, _event_entry(pseudonymizer, "studyin.material_view", {"studyin.material.id": "cardio\x00101"})
    )
    push(settings.redis_url or "", stream, entries)
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
    assert totals.dead_lettered == 2
    assert totals.events_inserted == wl.event_count
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        dead = client.xrange(dead_letter_key(settings))
    finally:
        client.close()
    errors = sorted(fields[b"error"].decode() for _, fields in dead)
    assert len(errors) == 2
    assert any("undecodable" in e for e in errors)
    assert any("Unicode" in e or "character" in e.lower() for e in errors), errors
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
    finally:
        await conn.close()


def _dead_letters(settings: Settings) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return list(client.xrange(dead_letter_key(settings)))
    finally:
        client.close()


def _event_entry(
    pseudonymizer: Pseudonymizer, name: str, attributes: dict[str, object], learner: str = "bad-field-learner"
) -> dict[bytes, bytes]:
    """One entry with one span carrying one event."""
    now = time_ns()
    span = SpanRecord(
        os.urandom(16),
        os.urandom(8),
        None,
        "studyin.event",
        wire.SPAN_KIND_INTERNAL,
        now - 1000,
        now,
        0,
        {"user.hash": pseudonymizer.pseudonymize(learner)},
        [EventRecord(name, now, attributes)],
        {"service.name": "test"},
    )
    return wire.entry_fields(wire.encode_records([span]), 1)


def _xp_entry(pseudonymizer: Pseudonymizer, amount: object) -> dict[bytes, bytes]:
    return _event_entry(
        pseudonymizer, "studyin.xp_awarded", {"studyin.xp.amount": amount, "studyin.xp.reason": "q"}
    )


@pytest.mark.parametrize("batch_size", [2000, 2], ids=["in-the-first-batch", "in-an-open-round"])
async def test_an_unusable_field_dead_letters_its_entry_naming_it_and_nothing_else_is_lost(
    migrated: Settings, batch_size: int
) -> None:
    """A number that is not one (only the OTLP gateway could carry it) never reaches a rollup.

    With 2 entries per read, the bad entry arrives while a round is open: the round is rolled
    back and its entries are read again, carefully.
    """
    migrated = migrated.with_overrides(batch_size=batch_size)
    pseudonymizer = Pseudonymizer.from_settings(migrated)
    wl = build(pseudonymizer, users=20, seed=12)
    stream = stream_keys(migrated)[0]
    bad = _xp_entry(pseudonymizer, "ten")
    push(migrated.redis_url or "", stream, [*wl.entries[:4], bad, *wl.entries[4:]])
    async with Aggregator(migrated) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
    assert totals.dead_lettered == 1
    assert totals.events_inserted == wl.event_count
    ((_, fields),) = _dead_letters(migrated)
    error = fields[b"error"].decode()
    assert "xp_awarded" in error and "xp_amount" in error and "number" in error, error
    conn = await connect(migrated)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
        assert await raw_count(conn) == wl.event_count
    finally:
        await conn.close()


async def test_numbers_as_strings_count_and_absurd_durations_are_refused(migrated: Settings) -> None:
    """ "10" counts as 10 (PostgreSQL's ``::numeric`` took it); a session of 3e7 years is refused
    by name (its study time would be split over 10^11 hours), the rest counted."""
    pseudonymizer = Pseudonymizer.from_settings(migrated)
    stream = stream_keys(migrated)[0]
    absurd = _event_entry(
        pseudonymizer,
        "studyin.session_end",
        {"studyin.session.id": str(uuid.uuid4()), "studyin.session.duration_s": 1e15},
    )
    push(migrated.redis_url or "", stream, [_xp_entry(pseudonymizer, " 10 "), absurd])
    async with Aggregator(migrated) as aggregator:
        totals = await asyncio.wait_for(aggregator.drain(timeout_s=30), timeout=60)
    assert totals.events_inserted == 1 and totals.dead_lettered == 1
    ((_, fields),) = _dead_letters(migrated)
    assert "duration_s" in fields[b"error"].decode() and "session_end" in fields[b"error"].decode()
    conn = await connect(migrated)
    try:
        assert await conn.fetchval("SELECT xp_total FROM gamification_stats") == 10
    finally:
        await conn.close()


async def test_a_round_meeting_a_day_without_partition_creates_it_outside_the_round(
    migrated: Settings,
) -> None:
    """Events of a day ten days back arrive while a round is open: creating the partition inside
    the round would wait on the round's own lock forever; the round is rolled back instead, the
    partition created, and everything counted once."""
    settings = migrated.with_overrides(batch_size=2)  # the old day comes in a later read
    pseudonymizer = Pseudonymizer.from_settings(settings)
    now = build(pseudonymizer, users=20, seed=31, spans_per_entry=10)
    old = build(pseudonymizer, users=5, seed=32, spans_per_entry=10, hours_ago=240)
    stream = stream_keys(settings)[0]
    push(settings.redis_url or "", stream, [*now.entries[:6], *old.entries, *now.entries[6:]])
    async with Aggregator(settings) as aggregator:
        totals = await asyncio.wait_for(aggregator.drain(timeout_s=60), timeout=90)
    assert totals.events_inserted == now.event_count + old.event_count
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(now + old)) == []
        days = set(await existing_partitions(conn))
        assert (datetime.now(UTC) - timedelta(hours=240)).date() in days
    finally:
        await conn.close()


async def test_a_concurrent_insert_of_the_same_event_counts_it_once(migrated: Settings) -> None:
    """Two members inserting the same event at once: the second waits, then keeps only its own."""
    from studyin_analytics.aggregator.consumer import rollups
    from studyin_analytics.aggregator.consumer.mapping import raw_records, rows_from_span
    from studyin_analytics.aggregator.storage.schema import ensure_partitions
    from studyin_analytics.exporter import wire

    wl = build(Pseudonymizer.from_settings(migrated), users=5, seed=77, spans_per_entry=10)
    records = raw_records(
        row for fields in wl.entries[:3] for span in wire.decode_entry(fields) for row in rows_from_span(span)
    )
    first = await connect(migrated, "aggregator")
    await rollups.setup_connection(first)
    await ensure_partitions(first, {r[1].date() for r in records}, set())
    async with Aggregator(migrated) as second:
        transaction = first.transaction()
        await transaction.start()
        assert (
            await rollups.insert_events(first, records[:1], None, variant=migrated.postgres_schema_variant)
            == 1
        )  # not committed yet
        racing = asyncio.create_task(second._commit(records, None, careful=False))
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second insert should wait for the first transaction"
        await transaction.commit()
        assert await racing == len(records) - 1
    try:
        assert await raw_count(first) == len(records)
        assert await first.fetchval("SELECT sum(events) FROM hourly_analytics_summary") == len(records)
    finally:
        await first.close()
