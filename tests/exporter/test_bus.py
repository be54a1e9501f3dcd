"""Bus reads (recent, range, live tail, stats) and the ``bus`` CLI, on real Redis 7 and embedded 6.2."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from studyin_analytics.aggregator.cli.main import main
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import RedisStreamSpanExporter, bus
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from tests.support.exporter import make_spans, private_redis


def emit_sessions(settings: Settings, users: int, views_each: int) -> None:
    """``users`` learning sessions with ``views_each`` material views each, one export per span."""
    provider = TracerProvider()
    exporter = RedisStreamSpanExporter(settings)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    for u in range(users):
        with tracker.session(f"user-{u}") as session:
            for m in range(views_each):
                tracker.material_view(f"user-{u}", f"mat-{u}-{m}", "video", session=session)
    provider.shutdown()


async def test_recent_per_type_newest_first(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path, stream_shards=2)
    emit_sessions(settings, users=4, views_each=3)
    client = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        views = await bus.recent(client, settings, "material_view", 5)
        assert len(views) == 5
        assert all(v.event_type == "material_view" for v in views)
        assert [v.time for v in views] == sorted((v.time for v in views), reverse=True)
        assert views[0].attributes["studyin.material.id"] == "mat-3-2"
        assert views[0].user_hash == Pseudonymizer.from_settings(settings).pseudonymize("user-3")
        starts = await bus.recent(client, settings, "session_start", 100)
        assert len(starts) == 4
        everything = await bus.recent(client, settings, None, 1000)
        assert len(everything) == 4 * (3 + 2)
        assert await bus.recent(client, settings, "no_such_type", 5) == []
    finally:
        await client.aclose()


async def test_between_uses_stream_ids_as_timeline(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path)
    emit_sessions(settings, users=1, views_each=2)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    client = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        now = datetime.now(UTC)
        window = await bus.between(client, settings, now - timedelta(minutes=5), now + timedelta(seconds=1))
        assert len(window) == 4
        assert {e.event_type for e in window} == {"session_start", "material_view", "session_end"}
        assert all(e.entry_time >= now - timedelta(minutes=5) for e in window)
        assert await bus.between(client, settings, hour_ago - timedelta(minutes=5), hour_ago) == []
        views = await bus.between(
            client, settings, now - timedelta(minutes=5), now, event_type="material_view"
        )
        assert len(views) == 2
    finally:
        await client.aclose()


async def test_live_tail_yields_new_events(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path)
    emit_sessions(settings, users=1, views_each=1)  # before the tail starts: not yielded
    client = aioredis.Redis.from_url(settings.redis_url or "")
    seen: list[bus.BusEvent] = []

    async def follow() -> None:
        async for event in bus.tail(client, settings, event_type="material_view", block_ms=200):
            seen.append(event)
            if len(seen) == 3:
                return

    try:
        task = asyncio.create_task(follow())
        await asyncio.sleep(0.3)  # let the tail take its starting point
        await asyncio.to_thread(emit_sessions, settings, 1, 3)
        await asyncio.wait_for(task, timeout=10)
    finally:
        await client.aclose()
    assert [e.attributes["studyin.material.id"] for e in seen] == ["mat-0-0", "mat-0-1", "mat-0-2"]


async def _stats_with_group(settings: Settings) -> bus.BusStats:
    key = bus.stream_keys(settings)[0]
    sync = redis.Redis.from_url(settings.redis_url or "")
    sync.xgroup_create(key, "aggregator", id="0", mkstream=True)
    exporter = RedisStreamSpanExporter(settings)
    for _ in range(5):
        exporter.export(make_spans(10))
    sync.xreadgroup("aggregator", "c1", {key: ">"}, count=2)  # 2 pending, 3 not yet delivered
    client = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        return await bus.stats(client, settings)
    finally:
        await client.aclose()
        exporter.shutdown()


def _check(stats: bus.BusStats, settings: Settings) -> None:
    (stream,) = stats.streams
    assert stream.key == f"{settings.stream_prefix}:events"
    assert stream.length == 5
    assert stream.oldest is not None and stream.newest is not None and stream.oldest <= stream.newest
    (group,) = stream.groups
    assert (group.name, group.consumers, group.pending, group.lag) == ("aggregator", 1, 2, 3)
    assert group.lag_exact
    assert stats.dead_letter_length == 0
    assert stats.totals["spans_exported"] == 50
    assert stats.totals["batches_exported"] == 5


async def test_stats_on_redis_7(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path)
    stats = await _stats_with_group(settings)
    _check(stats, settings)


async def test_stats_on_redis_6_counts_lag_server_side(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis", bundled=True) as server:
        settings = settings.with_overrides(redis_url=server.url, spool_dir=tmp_path / "spool")
        stats = await _stats_with_group(settings)
        assert stats.redis_version.startswith("6.")
        _check(stats, settings)


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("STUDYIN_ANALYTICS_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("STUDYIN_ANALYTICS_STREAM_PREFIX", settings.stream_prefix)
    monkeypatch.setenv("COLUMNS", "200")


def test_cli_stats_recent_tail(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path)
    emit_sessions(settings, users=2, views_each=2)
    _env(monkeypatch, settings)
    assert main(["bus", "stats", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["streams"][0]["length"] == 2  # one session span per user, one export each
    assert document["totals"]["spans_exported"] == 2
    assert main(["bus", "stats"]) == 0
    out = capsys.readouterr().out
    assert f"{settings.stream_prefix}:events" in out and "writers" in out
    assert main(["bus", "recent", "material_view", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 most recent material_view" in out and "mat-1-1" in out
    assert main(["bus", "tail", "--seconds", "0.5"]) == 0  # nothing new arrives: ends on time
    assert "material_view" not in capsys.readouterr().out
    later = threading.Timer(0.5, emit_sessions, args=(settings, 1, 1))
    later.start()
    try:
        assert main(["bus", "tail", "material_view", "--count", "1", "--seconds", "15"]) == 0
    finally:
        later.join()
    out = capsys.readouterr().out
    assert "material_view" in out and "mat-0-0" in out


async def test_recent_api_requests_come_from_server_spans(settings: Settings, tmp_path: Path) -> None:
    from opentelemetry.trace import SpanKind

    settings = settings.with_overrides(spool_dir=tmp_path)
    provider = TracerProvider()
    exporter = RedisStreamSpanExporter(settings)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("asgi")
    for status in (200, 404, 500):
        attributes = {"http.route": "/api/materials/{id}", "http.request.method": "GET"}
        attributes["http.response.status_code"] = status
        with tracer.start_as_current_span(
            "GET /api/materials/{id}", kind=SpanKind.SERVER, attributes=attributes
        ):
            pass
    with tracer.start_as_current_span("internal work"):
        pass
    provider.shutdown()
    client = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        requests = await bus.recent(client, settings, "api_request", 10)
    finally:
        await client.aclose()
    assert [r.attributes["studyin.api.status_code"] for r in requests] == [500, 404, 200]
    assert all(r.attributes["studyin.api.route"] == "/api/materials/{id}" for r in requests)
    assert [r.attributes.get("studyin.api.error_type") for r in requests] == ["500", None, None]
