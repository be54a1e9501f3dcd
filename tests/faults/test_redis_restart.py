"""Redis stopped mid-run and restarted: the exporter spools, replays, and every span is counted once.

The bus survives a Redis restart only with persistence: this private server runs with
``appendonly yes`` and ``appendfsync always`` (every acknowledged XADD and XACK is on disk
before the reply), so entries written before the crash, the consumer group and its
acknowledgements all come back. Without AOF a restarted Redis is empty (see docs/bus.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedis
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from studyin_analytics.instrumentation.settings import Settings

XP = 5


def sessions(tracker: StudyInTracker, n: int, tag: str) -> None:
    for i in range(n):
        user = f"learner-{i % 7}"
        with tracker.session(user) as session:
            tracker.material_view(user, f"{tag}-{i}", "article", session=session)
            tracker.xp_awarded(user, XP, "material_complete", session=session)


def run_with_crash(settings: Settings, server: EmbeddedRedis) -> tuple[int, int, int]:
    """Sessions before, during and after a Redis crash; returns (sessions, spooled spans, dropped)."""
    exporter = RedisStreamSpanExporter(settings)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, schedule_delay_millis=20, max_export_batch_size=16, export_timeout_millis=5000
        )
    )
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    sessions(tracker, 10, "before")
    assert provider.force_flush(10_000)
    server.kill()  # SIGKILL: a crash, not a clean shutdown
    sessions(tracker, 30, "during")
    assert provider.force_flush(10_000)
    spooled = exporter.stats.spans_spooled
    server.start()
    sessions(tracker, 10, "after")
    provider.shutdown()  # replays the spool, then the rest
    return 50, spooled, exporter.stats.spans_dropped


async def counts(settings: Settings) -> tuple[dict[str, int], int, int]:
    conn = await asyncpg.connect(settings.postgres_url)
    try:
        schema = settings.postgres_schema
        by_type = dict(
            await conn.fetch(f'SELECT event_type, count(*) FROM "{schema}".analytics_events GROUP BY 1')
        )
        stored = await conn.fetchval(f'SELECT count(*) FROM "{schema}".learning_sessions')
        xp = await conn.fetchval(f'SELECT sum(xp) FROM "{schema}".daily_activity_summary')
    finally:
        await conn.close()
    return by_type, int(stored), int(xp or 0)


async def test_redis_crash_and_restart_counts_every_span_once(migrated: Settings, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True, appendfsync="always")
    server.start()
    try:
        settings = migrated.with_overrides(
            redis_url=server.url,
            spool_dir=tmp_path / "spool",
            export_timeout_s=0.3,
            consumer_name="restart-test",
        )
        async with Aggregator(settings) as aggregator:  # the group exists before the crash
            await aggregator.drain(timeout_s=10)
        total, spooled, dropped = await asyncio.to_thread(run_with_crash, settings, server)
        assert spooled > 0, "Redis was down: the exporter should have spooled"
        assert dropped == 0
        async with Aggregator(settings) as aggregator:
            await aggregator.drain(timeout_s=60)
    finally:
        server.stop()
    by_type, stored, xp = await counts(settings)
    assert by_type == {
        "session_start": total,
        "material_view": total,
        "xp_awarded": total,
        "session_end": total,
    }
    assert stored == total
    assert xp == XP * total


async def test_aggregator_running_through_the_restart(migrated: Settings, tmp_path: Path) -> None:
    """The same with the aggregator consuming the whole time (it must survive the outage)."""
    (tmp_path / "redis").mkdir()
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True, appendfsync="always")
    server.start()
    try:
        settings = migrated.with_overrides(
            redis_url=server.url,
            spool_dir=tmp_path / "spool",
            export_timeout_s=0.3,
            consumer_name="restart-live",
        )
        async with Aggregator(settings) as aggregator:
            stop = asyncio.Event()
            consumer = asyncio.create_task(aggregator.run(stop))
            total, spooled, dropped = await asyncio.to_thread(run_with_crash, settings, server)
            assert spooled > 0 and dropped == 0
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.wait_for(consumer, timeout=30)
            await aggregator.drain(timeout_s=60)
    finally:
        server.stop()
    by_type, stored, xp = await counts(settings)
    assert by_type == {
        "session_start": total,
        "material_view": total,
        "xp_awarded": total,
        "session_end": total,
    }
    assert stored == total
    assert xp == XP * total
