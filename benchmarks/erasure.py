"""Erasure benchmarks: erasing one learner from a large raw events table, and the tombstone's cost
on the hot path (docs/privacy.md).

``erasure: erase one learner from N raw events`` times :func:`...learners.postgres.erase` (every
per-learner table and the raw events, one transaction) against a plain ``count(*)`` of the raw
events measured in the same run: the raw events have no index on ``user_hash``, so the delete is
one scan of the table. ``erasure: tombstone check per span`` times the check the aggregator, the
gateway, the exporter and the LRS forwarder make on every record, against decoding the same
records from the wire (what each of them does anyway).
"""

from __future__ import annotations

import asyncio
import time
from datetime import date

import asyncpg

from ..aggregator.cli.settings import require
from ..aggregator.learners import postgres
from ..aggregator.learners.identity import Learner
from ..exporter import wire
from ..exporter.tombstone import Tombstone, digest
from .framework import BenchContext, Measurement, at_most, bench, median

LEARNERS = 5000


def _pseudonym(n: int) -> str:
    return f"k1:{n:032x}"


async def _fill(conn: asyncpg.Connection, rows: int) -> None:
    """``rows`` raw events of :data:`LEARNERS` learners over the last two days, and their rollup rows."""
    await conn.execute(
        "SELECT create_events_partition($1::date - i) FROM generate_series(-1, 2) AS i", date.today()
    )
    batch = 200_000
    for start in range(0, rows, batch):
        await conn.execute(
            f"""
            INSERT INTO analytics_events
                (event_id, occurred_at, event_type, user_hash, session_id, properties)
            SELECT gen_random_uuid(), now() - (i % 172000) * interval '1 second', 'material_view',
                   'k1:' || lpad(to_hex(i % {LEARNERS}), 32, '0'), NULL,
                   jsonb_build_object('material_id', 'm' || (i % 300))
            FROM generate_series($1::bigint, $2::bigint) AS i
            """,
            start,
            min(rows, start + batch) - 1,
        )
    await conn.execute(
        "INSERT INTO gamification_stats (user_hash) "
        f"SELECT 'k1:' || lpad(to_hex(i), 32, '0') FROM generate_series(0, {LEARNERS - 1}) AS i"
    )
    await conn.execute("ANALYZE analytics_events")


@bench("erasure_postgres")
async def erase_postgres(ctx: BenchContext) -> list[Measurement]:
    rows = ctx.scale(2_000_000, 200_000)
    settings = await ctx.migrated_settings("erasure")
    conn = await asyncpg.connect(require(settings.postgres_url, "postgres_url"))
    try:
        await conn.execute(f'SET search_path TO "{settings.postgres_schema}"')
        async with ctx.task(f"erasure: fill {rows:,} raw events"):
            await _fill(conn, rows)
        scans: list[float] = []
        erasures: list[float] = []
        for n in range(ctx.repeat_count):
            started = time.perf_counter()
            await conn.fetchval("SELECT count(*) FROM analytics_events")
            scans.append(time.perf_counter() - started)
            learner = Learner((_pseudonym(n),))
            started = time.perf_counter()
            deleted = await postgres.erase(conn, learner)
            erasures.append(time.perf_counter() - started)
            assert deleted["analytics_events"] == rows // LEARNERS and deleted["gamification_stats"] == 1
    finally:
        await conn.close()
    value, baseline = median(erasures), median(scans)
    text, met = at_most(value / baseline, 5.0, "x a count(*) scan")
    return [
        Measurement(
            f"erasure: erase one learner from {rows:,} raw events",
            value,
            "s",
            baseline=baseline,
            baseline_name="count(*) of the raw events",
            target=text,
            met=met,
            samples=erasures,
            notes=f"{LEARNERS:,} learners, {rows // LEARNERS:,} events each; all per-learner tables at once",
        )
    ]


@bench("erasure_tombstone")
async def tombstone_cost(ctx: BenchContext) -> list[Measurement]:
    records = [
        wire.SpanRecord(
            n.to_bytes(16, "big"),
            n.to_bytes(8, "big"),
            None,
            "studyin.learning_session",
            1,
            0,
            1,
            0,
            {"user.hash": _pseudonym(n % 500)},
            [wire.EventRecord("studyin.material_view", 1, {"user.hash": _pseudonym(n % 500)})] * 4,
            {},
        )
        for n in range(ctx.scale(20_000, 5_000))
    ]
    blob = wire.encode_records(records)
    stone = Tombstone(ctx.settings)
    stone.digests = frozenset(digest(_pseudonym(10_000 + n)) for n in range(10_000))  # 10k erased, none here
    decode: list[float] = []
    check: list[float] = []
    for _ in range(ctx.repeat_count * 3):
        started = time.perf_counter()
        decoded = wire.decode_batch(blob)
        decode.append((time.perf_counter() - started) / len(records))
        started = time.perf_counter()
        kept = stone.keep_records(decoded)
        check.append((time.perf_counter() - started) / len(records))
        assert len(kept) == len(records)
        await asyncio.sleep(0)
    value, baseline = median(check) * 1e6, median(decode) * 1e6
    text, met = at_most(value / baseline, 0.25, "x decoding the span")
    return [
        Measurement(
            "erasure: tombstone check per span (10k erased learners)",
            value,
            "µs",
            baseline=baseline,
            baseline_name="wire.decode_batch per span",
            target=text,
            met=met,
            samples=[c * 1e6 for c in check],
            notes="span and 4 events each naming a learner; empty tombstone: no check at all",
        )
    ]
