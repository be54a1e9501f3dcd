"""A bad event costs only itself: the rest of its entry is stored, it is dead-lettered with its
reason exactly once, and no partition is created outside the bounded window of days."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.consumer.service import BatchResult
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import PARTITIONS_AHEAD, existing_partitions
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import dead_letter_key, stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.workload import bad_spans, build, event_span, mismatches, push, truth_of, with_spans


def dead_letters(settings: Settings) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return list(client.xrange(dead_letter_key(settings)))
    finally:
        client.close()


def entry_ids(settings: Settings) -> list[bytes]:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return [entry_id for entry_id, _ in client.xrange(stream_keys(settings)[0])]
    finally:
        client.close()


async def drain(settings: Settings) -> BatchResult:
    async with Aggregator(settings) as aggregator:
        return await asyncio.wait_for(aggregator.drain(timeout_s=60), timeout=90)


async def partition_days(settings: Settings) -> set[Any]:
    conn = await connect(settings)
    try:
        return set(await existing_partitions(conn))
    finally:
        await conn.close()


@pytest.mark.parametrize("batch_size", [2000, 2], ids=["in-the-first-batch", "in-an-open-round"])
async def test_bad_events_are_dead_lettered_alone_and_the_rest_of_their_entry_counts(
    migrated: Settings, batch_size: int
) -> None:
    """An entry of a good batch plus four bad spans (NUL, unusable field, 300 days ahead, a server
    span 2 days ahead): its good events count, the four are one dead letter listing each with
    its reason, and no partition is created for the future days."""
    settings = migrated.with_overrides(batch_size=batch_size)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    wl = build(pseudonymizer, users=20, seed=41)
    other = build(pseudonymizer, users=4, seed=42)
    bad = bad_spans(pseudonymizer)
    mixed = with_spans(other.entries[0], bad)
    push(
        settings.redis_url or "",
        stream_keys(settings)[0],
        [*wl.entries[:4], mixed, *other.entries[1:], *wl.entries[4:]],
    )
    mixed_id = entry_ids(settings)[4]

    totals = await drain(settings)

    assert totals.events_inserted == wl.event_count + other.event_count
    assert totals.dead_lettered == 1 and totals.events_dead_lettered == 4
    ((_, fields),) = dead_letters(settings)
    assert fields[b"source_id"] == mixed_id and int(fields[b"attempts"]) >= 1
    # The dead letter carries the bad spans as the bus does (same ids, same events) and which events.
    spans = wire.decode_entry(fields)
    assert [(s.trace_id, s.span_id) for s in spans] == [(s.trace_id, s.span_id) for s in bad]
    listed = json.loads(fields[b"events"])
    reasons = {(item["span"], item["event"]): item["reason"] for item in listed}
    assert set(reasons) == {(0, 0), (1, 0), (2, 0), (3, None)}
    assert "material_id" in reasons[(0, 0)] and "NUL" in reasons[(0, 0)]
    assert "xp_amount" in reasons[(1, 0)] and "xp_awarded" in reasons[(1, 0)]
    assert "ahead" in reasons[(2, 0)] and "ahead" in reasons[(3, None)]
    assert [item["event_type"] for item in listed] == [
        "material_view",
        "xp_awarded",
        "material_view",
        "api_request",
    ]
    assert "4 of the entry's events refused" in fields[b"error"].decode()
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl + other)) == []
        days = set(await existing_partitions(conn))
    finally:
        await conn.close()
    last = datetime.now(UTC).date() + timedelta(days=PARTITIONS_AHEAD)
    assert all(day <= last for day in days), sorted(days)[-3:]


async def test_three_hundred_future_days_create_no_partition(migrated: Settings) -> None:
    """The issue's request: spans on 300 future days (here from the in-process exporter's path,
    straight onto the bus). None of them is stored, none creates a partition, all are dead-lettered."""
    pseudonymizer = Pseudonymizer.from_settings(migrated)
    now = datetime.now(UTC)
    spans = [
        event_span(
            pseudonymizer,
            "studyin.material_view",
            {"studyin.material.id": f"m-{day}"},
            at_ns=(int(now.timestamp()) + day * 86_400) * 1_000_000_000,
        )
        for day in range(1, 301)
    ]
    push(
        migrated.redis_url or "",
        stream_keys(migrated)[0],
        [wire.entry_fields(wire.encode_records(spans), 300)],
    )
    before = await partition_days(migrated)

    totals = await drain(migrated)

    assert totals.events_inserted == 0 and totals.events_dead_lettered == 300
    after = await partition_days(migrated)
    assert after - before <= {now.date() + timedelta(days=d) for d in range(PARTITIONS_AHEAD + 1)}
    assert all(day <= now.date() + timedelta(days=PARTITIONS_AHEAD) for day in after), sorted(after)
    ((_, fields),) = dead_letters(migrated)
    assert len(json.loads(fields[b"events"])) == 300


async def test_the_event_window_admits_the_allowed_skew(migrated: Settings) -> None:
    """An event 5 minutes ahead is inside the default 10-minute allowance and stored; one 20
    minutes ahead is refused; with ``max_event_future_s=0`` a 5-minute one is refused too."""
    pseudonymizer = Pseudonymizer.from_settings(migrated)
    stream = stream_keys(migrated)[0]

    def ahead(minutes: int) -> wire.SpanRecord:
        at = time.time_ns() + minutes * 60 * 1_000_000_000
        return event_span(pseudonymizer, "studyin.material_view", {"studyin.material.id": "m"}, at_ns=at)

    push(migrated.redis_url or "", stream, [wire.entry_fields(wire.encode_records([ahead(5), ahead(20)]), 2)])
    totals = await drain(migrated)
    assert (totals.events_inserted, totals.events_dead_lettered) == (1, 1)

    strict = migrated.with_overrides(max_event_future_s=0, consumer_name="strict")
    push(strict.redis_url or "", stream, [wire.entry_fields(wire.encode_records([ahead(5)]), 1)])
    totals = await drain(strict)
    assert (totals.events_inserted, totals.events_dead_lettered) == (0, 1)


async def test_an_event_postgresql_refuses_is_found_by_halves_at_the_last_attempt(
    migrated: Settings,
) -> None:
    """A value only PostgreSQL refuses (here a trigger of the test's own: what the aggregator
    cannot foresee) fails the entry; it is retried, and at its last attempt its events are
    committed by halves: the refused event alone is dead-lettered, naming PostgreSQL's error."""
    settings = migrated.with_overrides(max_delivery_attempts=2)
    owner = await asyncpg.connect(
        settings.postgres_url, server_settings={"search_path": settings.postgres_schema}
    )
    try:
        await owner.execute(
            """
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.properties->>'material_id' = 'poison' THEN
                    RAISE EXCEPTION 'poison refused by the test' USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON analytics_events
                FOR EACH ROW EXECUTE FUNCTION refuse_poison();
            """
        )
    finally:
        await owner.close()
    pseudonymizer = Pseudonymizer.from_settings(settings)
    wl = build(pseudonymizer, users=20, seed=43)
    other = build(pseudonymizer, users=4, seed=44)
    poison = event_span(pseudonymizer, "studyin.material_view", {"studyin.material.id": "poison"})
    entries = [*wl.entries[:3], {b"v": b"1", b"n": b"1", b"d": b"\xc1garbage"}, *wl.entries[3:]]
    entries.insert(5, with_spans(other.entries[0], [poison]))
    push(settings.redis_url or "", stream_keys(settings)[0], [*entries, *other.entries[1:]])

    totals = await drain(settings)

    assert totals.dead_lettered == 2 and totals.events_dead_lettered == 1
    assert totals.events_inserted == wl.event_count + other.event_count
    errors = sorted(fields[b"error"].decode() for _, fields in dead_letters(settings))
    assert any("undecodable" in e for e in errors), errors
    assert any("poison refused by the test" in e and "1 of the entry's events" in e for e in errors), errors
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl + other)) == []
    finally:
        await conn.close()


async def test_a_crash_between_the_commit_and_the_dead_letter_writes_it_once(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refused events' dead letter and the entry's XACK are one MULTI after the commit: if the
    process dies in between, the entry is read again, its stored events are no-ops and the
    dead letter is written then, once."""
    from studyin_analytics.aggregator.consumer import service as consumer

    pseudonymizer = Pseudonymizer.from_settings(migrated)
    wl = build(pseudonymizer, users=10, seed=45)
    mixed = with_spans(wl.entries[0], bad_spans(pseudonymizer))
    push(migrated.redis_url or "", stream_keys(migrated)[0], [mixed, *wl.entries[1:]])
    original = consumer.Aggregator._move_to_dead_letter

    class Killed(BaseException):
        """The process dying right after the commit, before the dead letter's MULTI."""

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise Killed()

    monkeypatch.setattr(consumer.Aggregator, "_move_to_dead_letter", crash)
    with pytest.raises(Killed):
        await drain(migrated)
    assert dead_letters(migrated) == []
    monkeypatch.setattr(consumer.Aggregator, "_move_to_dead_letter", original)

    totals = await drain(migrated)

    assert len(dead_letters(migrated)) == 1 and totals.events_dead_lettered == 4
    conn = await connect(migrated)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
    finally:
        await conn.close()
