"""``redis_wait_replicas`` on one primary with a replica (real servers): a write counts once the
replica has it; while it cannot (the replica is gone), the exporter spools and the gateway
answers 503, naming the primary; once a replica is back, the spool is replayed.

The same on a real Redis Cluster with a failover: ``tests/cluster/test_durable_writes.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import redis
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExportResult

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedis
from studyin_analytics.exporter import RedisStreamSpanExporter, wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.gateway.app import create_gateway
from tests.support.exporter import follow, make_spans

PB = {"content-type": "application/x-protobuf"}


def span_names(url: str, settings: Settings) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [r.name for _, f in client.xrange(stream_keys(settings)[0]) for r in wire.decode_entry(f)]
    finally:
        client.close()


async def test_writes_count_once_a_replica_has_them(
    settings: Settings,
    pair: tuple[EmbeddedRedis, EmbeddedRedis],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, replica = pair
    settings = settings.with_overrides(
        redis_url=primary.url,
        spool_dir=tmp_path / "spool",
        export_timeout_s=1.0,
        export_retry_s=0.3,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=100,
    )
    exporter = RedisStreamSpanExporter(settings)
    app = create_gateway(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as gateway,
    ):
        assert exporter.export(make_spans(2, prefix="a")) is SpanExportResult.SUCCESS
        assert exporter.spooled_batches == 0  # confirmed by the replica
        body = encode_spans(make_spans(2, prefix="g")).SerializeToString()
        assert (await gateway.post("/v1/traces", content=body, headers=PB)).status_code == 200

        replica.stop()  # no replica: nothing can be confirmed
        caplog.set_level(logging.WARNING)
        assert exporter.export(make_spans(2, prefix="b")) is SpanExportResult.SUCCESS
        assert exporter.spooled_batches == 1  # written to the primary, but kept until confirmed
        assert exporter.stats.spans_exported == 2
        warning = next(r.getMessage() for r in caplog.records if "spooling" in r.getMessage())
        assert f"127.0.0.1:{primary.port}" in warning and "NotReplicated" in warning, warning
        caplog.clear()
        refused = await gateway.post("/v1/traces", content=body, headers=PB)
        assert refused.status_code == 503
        logged = next(r.getMessage() for r in caplog.records if "answering 503" in r.getMessage())
        assert f"127.0.0.1:{primary.port}" in logged and "NotReplicated" in logged, logged

        replica.start()
        follow(replica, primary)
        exporter._down_until = 0.0
        # Retried every 0.3 s, each write waiting 100 ms for the replica's ack: 20 s leaves room for a
        # loaded CI host (5 s once ran out there while the replica had just synced).
        assert exporter.force_flush(20_000)
        assert exporter.stats.spans_exported == 4
    exporter.shutdown()
    names = span_names(primary.url, settings)
    # b was written unconfirmed (once per attempt), then replayed: duplicates the aggregator absorbs.
    assert names.count("b-0") >= 2 and {"a-0", "a-1", "g-0", "g-1", "b-1"} <= set(names)
    assert span_names(replica.url, settings) == names  # and the replica has all of it
