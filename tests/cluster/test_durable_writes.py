"""Durable writes on a real Redis Cluster: with ``redis_wait_replicas`` no acknowledged span is lost
when a primary dies, and the operator is told which node failed and what is left spooled.

The fault is induced so that it is certain, not a matter of timing: the replica of one primary
is stopped (SIGSTOP) and that primary drops its replication link (``CLIENT KILL TYPE replica``),
so from then on it acknowledges writes its replica never receives; then the primary is
SIGKILLed, the replica resumed and promoted, and the dead node restarted as its replica. In
that window:

* an exporter without ``WAIT`` has its writes acknowledged, and those on the dead primary's
  shards are gone after the promotion (what the docs warn about, reproduced exactly);
* the exporter with ``redis_wait_replicas=1`` gets no confirmation, spools, and replays once
  the promoted replica has a replica again; the gateway answers 503 and the retried request
  (what a collector does) is written once confirmed. Every span either of them acknowledged
  is on the bus at the end.

An exporter that meets the dead primary names it, not the node of the configured URL; one that
shuts down during the failover reports what it leaves spooled, and the next exporter on the bus
replays it (``test_the_failed_node_is_named_…``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from redis.crc import key_slot

from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedisCluster
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.bus import shard_index, stream_keys
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.settings import Settings
from tests.support.cluster import SHARDS, bus_entries, node_client, records_of, slot_owners
from tests.support.exporter import make_spans

pytestmark = pytest.mark.slow

USERS = [f"t1:{i:032x}" for i in range(60)]
PB = {"content-type": "application/x-protobuf"}


def names(spans: list[ReadableSpan]) -> set[str]:
    return {span.name for span in spans}


def on_the_bus(settings: Settings) -> set[str]:
    return {record.name for entries in bus_entries(settings).values() for record in records_of(entries)}


def stall_replication(cluster: EmbeddedRedisCluster, primary: str) -> str:
    """From now on ``primary`` acknowledges writes its replica never receives; returns the replica."""
    replica = next(a for a, (role, of) in cluster.topology().items() if role == "replica" and of == primary)
    process = cluster.node(replica).process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    client = node_client(primary)
    try:
        assert client.execute_command("CLIENT", "KILL", "TYPE", "replica") >= 1
    finally:
        client.close()
    return replica


def resume(cluster: EmbeddedRedisCluster, address: str) -> None:
    process = cluster.node(address).process
    assert process is not None
    os.kill(process.pid, signal.SIGCONT)


def drain(exporter: RedisStreamSpanExporter, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while exporter.spooled_batches and time.monotonic() < deadline:
        exporter._down_until = 0.0  # do not wait out the probe interval
        exporter.force_flush(2000)
        time.sleep(0.1)
    assert exporter.spooled_batches == 0, "the spool was not replayed"


async def test_with_wait_no_acknowledged_span_is_lost_when_a_primary_fails(
    cluster_settings: Settings,
    redis_cluster: EmbeddedRedisCluster,
    victim: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = cluster_settings.with_overrides(
        spool_dir=tmp_path / "spool", export_timeout_s=2.0, export_retry_s=0.5, gateway_retry_after_s=1
    )
    durable = base.with_overrides(redis_wait_replicas=1, redis_wait_timeout_ms=200)
    keys = stream_keys(base)
    owners = slot_owners(victim)
    on_victim = {key for key in keys if owners[key_slot(key.encode())] == victim}
    caplog.set_level(logging.WARNING)
    acknowledged: set[str] = set()

    exporter = RedisStreamSpanExporter(durable)
    without_wait = RedisStreamSpanExporter(base)
    app = create_gateway(durable)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as gateway,
    ):
        spans = make_spans(30, prefix="healthy", users=USERS)
        assert exporter.export(spans) is SpanExportResult.SUCCESS and exporter.spooled_batches == 0
        acknowledged |= names(spans)  # confirmed at once while the replicas are in sync

        replica = stall_replication(redis_cluster, victim)
        try:
            unsafe = make_spans(30, prefix="no-wait", users=USERS)
            assert without_wait.export(unsafe) is SpanExportResult.SUCCESS
            assert without_wait.spooled_batches == 0  # acknowledged by the primary alone
            for i in range(3):
                spans = make_spans(30, prefix=f"durable-{i}", users=USERS)
                assert exporter.export(spans) is SpanExportResult.SUCCESS
                acknowledged |= names(spans)
            assert exporter.spooled_batches > 0  # WAIT unconfirmed: kept on disk, not counted as written
            assert "NotReplicated" in caplog.text and victim in caplog.text
            gateway_spans = make_spans(30, prefix="gateway", users=USERS)
            body = encode_spans(gateway_spans).SerializeToString()
            refused = await gateway.post("/v1/traces", content=body, headers=PB)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            logged = [r.getMessage() for r in caplog.records if "answering 503" in r.getMessage()]
            assert logged and victim in logged[-1] and "NotReplicated" in logged[-1], logged

            redis_cluster.node(victim).kill()  # (kill_primary would look for its replica: failed by now)
        finally:
            resume(redis_cluster, replica)
        redis_cluster.wait_for_failover(replica)
        redis_cluster.restart_node(victim)  # a replica again, so WAIT 1 can be confirmed

        for _ in range(300):  # the collector's retries
            response = await gateway.post("/v1/traces", content=body, headers=PB)
            if response.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert response.status_code == 200, response.text
        acknowledged |= names(gateway_spans)
        drain(exporter)
    for writer in (exporter, without_wait):
        writer.shutdown()

    bus = on_the_bus(base)
    assert acknowledged - bus == set()  # nothing acknowledged with WAIT is lost
    # Without WAIT, exactly the spans written to the dead primary's shards are gone.
    lost = names(unsafe) - bus
    expected = {
        span.name
        for span in unsafe
        if keys[shard_index((span.attributes or {})[semconv.USER_HASH], SHARDS)] in on_victim  # type: ignore[arg-type]
    }
    assert lost == expected and lost, (len(lost), len(expected))


def test_the_failed_node_is_named_and_a_spool_left_at_shutdown_is_reported_and_replayed(
    cluster_settings: Settings,
    redis_cluster: EmbeddedRedisCluster,
    victim: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = cluster_settings.with_overrides(
        spool_dir=tmp_path / "spool", export_timeout_s=2.0, export_retry_s=0.5
    )
    url_node = (settings.redis_url or "").removeprefix("redis://")
    caplog.set_level(logging.WARNING)
    leaver = RedisStreamSpanExporter(settings)
    first = make_spans(30, prefix="before", users=USERS)
    assert leaver.export(first) is SpanExportResult.SUCCESS and leaver.spooled_batches == 0
    replica = redis_cluster.kill_primary(victim)
    leaving = make_spans(30, prefix="leaver", users=USERS)
    assert leaver.export(leaving) is SpanExportResult.SUCCESS
    warned = [r.getMessage() for r in caplog.records if "spooling" in r.getMessage()]
    # The node that died, not the one of the configured URL (it is alive and well).
    assert warned and all(victim in m and url_node not in m for m in warned), warned
    leaver.shutdown()  # during the failover: the spool stays on disk
    left = leaver.spooled_batches
    assert left > 0, "a shut-down exporter reports what it left on disk"
    (report,) = [r.getMessage() for r in caplog.records if "stay spooled" in r.getMessage()]
    assert f"{left} batches" in report and victim in report and str(tmp_path / "spool") in report, report
    assert "adopts and replays" in report
    assert len(list((tmp_path / "spool").rglob("*.batch"))) == left

    redis_cluster.wait_for_failover(replica)
    redis_cluster.restart_node(victim)
    heir = RedisStreamSpanExporter(settings)  # the next exporter on this bus and host
    assert heir.spooled_batches == left
    drain(heir)
    heir.shutdown()
    assert names(first) | names(leaving) <= on_the_bus(settings)
