"""Writer counters in Redis: the export latency is counted with what it describes, none is lost
at shutdown, and ``bus stats`` means over measured writes."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis
from opentelemetry.sdk.trace.export import SpanExportResult

from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.exporter.redis_exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.writer_stats import summarize
from studyin_analytics.instrumentation.settings import Settings
from tests.support.exporter import make_spans
from tests.support.gateway import PB, request_bytes


def counters(settings: Settings, role: str) -> dict[str, str]:
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    try:
        (key,) = client.keys(f"{settings.stream_prefix}:stats:{role}:*")
        return client.hgetall(key)  # type: ignore[return-value]
    finally:
        client.close()


def test_exporter_latency_is_counted_with_the_writes_it_measures(settings: Settings, tmp_path: Path) -> None:
    """One round trip per batch stays one, so a write carries the latencies before it: the count
    says how many (before, ``bus stats`` divided the sum of n-1 latencies by n batches), and the
    last write's latency reaches the hash at shutdown (before, never)."""
    exporter = RedisStreamSpanExporter(settings.with_overrides(spool_dir=tmp_path))
    for start in range(0, 30, 10):
        assert exporter.export(make_spans(10, prefix=f"b{start}")) is SpanExportResult.SUCCESS
    running = counters(settings, "exporter")
    assert running["batches_exported"] == "3" and running["export_latency_count"] == "2"
    mean = summarize([running])["export_latency_ms_mean"]
    assert abs(mean - float(running["export_latency_ms_sum"]) / 2) < 1e-9
    exporter.shutdown()
    final = counters(settings, "exporter")
    stats = exporter.stats
    assert final["export_latency_count"] == "3" == str(stats.export_latency_count)
    assert float(final["export_latency_ms_last"]) == round(stats.export_latency_ms_last, 3)
    assert float(final["export_latency_ms_sum"]) == round(stats.export_latency_ms_sum, 3)


async def test_gateway_latency_is_counted_and_written_at_close(settings: Settings) -> None:
    app = create_gateway(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            for _ in range(3):
                response = await client.post("/v1/traces", content=request_bytes(2), headers=PB)
                assert response.status_code == 200
        running = counters(settings, "gateway")
        assert running["requests"] == "3" and running["export_latency_count"] == "2"
    final = counters(settings, "gateway")
    stats = app.state.gateway.stats
    assert final["export_latency_count"] == "3" == str(stats.export_latency_count)
    assert float(final["export_latency_ms_last"]) == round(stats.export_latency_ms_last, 3)
