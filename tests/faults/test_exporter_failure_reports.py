"""What the exporter tells an operator when Redis fails: the server that failed, and what it leaves
spooled when it shuts down (the figure and a log line saying who replays it).

On a cluster the failed node is rarely the one of the configured URL (a startup node):
``tests/cluster/test_durable_writes.py`` kills a primary for real and checks the warning names it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk.trace.export import SpanExportResult

from studyin_analytics.aggregator.devtools.embedded import free_port
from studyin_analytics.exporter import RedisStreamSpanExporter, wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.connection import NotReplicated, failed_node, unavailable
from studyin_analytics.instrumentation.settings import Settings
from tests.support.exporter import make_spans, private_redis


def test_the_node_a_real_connection_error_names_is_found() -> None:
    port = free_port()
    with pytest.raises(redis.ConnectionError) as caught:
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping()
    assert failed_node(caught.value) == f"127.0.0.1:{port}"
    wrapped = RuntimeError("pipeline failed")
    wrapped.__cause__ = caught.value
    assert failed_node(wrapped) == f"127.0.0.1:{port}"
    assert failed_node(redis.ConnectionError("Connection closed by server.")) is None


def test_the_report_names_the_node_never_the_password() -> None:
    settings = Settings(redis_url="redis://user:s3cret@10.0.0.1:6379/0", _env_file=None)  # type: ignore[call-arg]
    cluster = settings.with_overrides(redis_cluster=True, redis_url="redis://user:s3cret@10.0.0.1:6379")
    refused = redis.ConnectionError("Error 111 connecting to 10.0.0.9:7002. Connection refused.")
    closed = redis.ConnectionError("Connection closed by server.")
    assert unavailable(refused, cluster) == "Redis Cluster node 10.0.0.9:7002 unreachable (ConnectionError)"
    assert unavailable(closed, cluster, ["10.0.0.5:7001", "10.0.0.4:7000"]) == (
        "Redis Cluster node 10.0.0.4:7000 or 10.0.0.5:7001 unreachable (ConnectionError)"
    )
    assert "s3cret" not in unavailable(closed, cluster) and "s3cret" not in unavailable(closed, settings)
    assert unavailable(closed, settings).startswith("Redis redis://user:")
    short = unavailable(NotReplicated(["10.0.0.9:7002"], 1, 500), cluster)
    assert short == (
        "Redis Cluster node 10.0.0.9:7002: write not confirmed by 1 replica(s) within 500 ms "
        "on 10.0.0.9:7002 (NotReplicated)"
    )


def test_a_spool_left_at_shutdown_is_counted_reported_and_replayed_by_the_next_exporter(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with private_redis(tmp_path / "redis") as server:
        settings = settings.with_overrides(
            redis_url=server.url, spool_dir=tmp_path / "spool", export_timeout_s=0.3
        )
        exporter = RedisStreamSpanExporter(settings)
        server.kill()
        caplog.set_level(logging.WARNING)
        for prefix in ("a", "b"):
            assert exporter.export(make_spans(2, prefix=prefix)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert exporter.spooled_batches == 2  # what is left on disk, not 0
        (report,) = [r.getMessage() for r in caplog.records if "stay spooled" in r.getMessage()]
        assert "2 batches" in report and f"127.0.0.1:{server.port}" in report, report
        assert str(tmp_path / "spool") in report and "adopts and replays" in report, report
        assert len(list((tmp_path / "spool").rglob("*.batch"))) == 2

        server.start()
        heir = RedisStreamSpanExporter(settings)
        assert heir.spooled_batches == 2
        assert heir.force_flush(5000)
        heir.shutdown()
        assert heir.spooled_batches == 0
        client = redis.Redis.from_url(server.url)
        try:
            spans = [r.name for _, f in client.xrange(stream_keys(settings)[0]) for r in wire.decode_entry(f)]
        finally:
            client.close()
        assert spans == ["a-0", "a-1", "b-0", "b-1"]
