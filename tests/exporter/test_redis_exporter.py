"""RedisStreamSpanExporter against real Redis: round trips, sharding, retention, spool, fork, counters."""

from __future__ import annotations

import logging
import os
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import RedisStreamSpanExporter, wire
from studyin_analytics.exporter.bus import shard_index, stream_keys
from studyin_analytics.exporter.writer_stats import stats_key
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.exporter import Capture, make_spans, private_redis, stream_span_names

RAW_ID = "canary-raw-user-271828"


class CountingConnection(redis.Connection):
    """Counts requests written to the socket: one per command, one per pipeline."""

    sends = 0

    def send_packed_command(self, command: object, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[arg-type]


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@pytest.mark.usefixtures("exporter_environment")
def test_entry_point_builds_the_exporter_from_the_environment(settings: Settings) -> None:
    (entry,) = entry_points(group="opentelemetry_traces_exporter", name="studyin_redis")
    exporter = entry.load()()
    assert isinstance(exporter, RedisStreamSpanExporter)
    assert exporter.export(make_spans(3)) is SpanExportResult.SUCCESS
    exporter.shutdown()
    client = _client(settings.redis_url or "")
    assert stream_span_names(client, f"{settings.stream_prefix}:events") == ["span-0", "span-1", "span-2"]


def test_one_round_trip_per_batch_and_counters_in_it(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path)
    client = redis.Redis.from_url(settings.redis_url or "", connection_class=CountingConnection)
    exporter = RedisStreamSpanExporter(settings, client=client)
    spans = make_spans(512)
    assert exporter.export(spans[:10]) is SpanExportResult.SUCCESS  # connects (handshake commands)
    before = CountingConnection.sends
    for start in range(0, 512, 128):
        assert exporter.export(spans[start : start + 128]) is SpanExportResult.SUCCESS
    assert CountingConnection.sends - before == 4
    reader = _client(settings.redis_url or "")
    assert reader.xlen(stream_keys(settings)[0]) == 5
    counters = reader.hgetall(stats_key(settings, "exporter"))
    assert counters[b"spans_exported"] == b"522"
    assert counters[b"batches_exported"] == b"5"
    assert 0 < reader.ttl(stats_key(settings, "exporter")) <= 3600
    exporter.shutdown()


def test_shards_by_user_hash_in_one_round_trip(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(stream_shards=4, spool_dir=tmp_path)
    users = [f"t1:{i:032x}" for i in range(16)]
    client = redis.Redis.from_url(settings.redis_url or "", connection_class=CountingConnection)
    exporter = RedisStreamSpanExporter(settings, client=client)
    exporter.export(make_spans(1))
    before = CountingConnection.sends
    assert exporter.export(make_spans(160, users=users)) is SpanExportResult.SUCCESS
    assert CountingConnection.sends - before == 1
    reader = _client(settings.redis_url or "")
    total = 0
    used = 0
    for shard, key in enumerate(stream_keys(settings)):
        for _, fields in reader.xrange(key):
            for record in wire.decode_entry(fields):
                user = record.attributes["user.hash"]
                assert shard_index(user, 4) == shard
                total += 1
        used += reader.exists(key)
    assert total == 161
    assert used >= 2  # 16 users over 4 shards
    exporter.shutdown()


def test_retention_trims_by_minid_and_caps_length(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path, stream_max_len=1000)
    reader = _client(settings.redis_url or "")
    key = stream_keys(settings)[0]
    # 300 entries from 1970: older than any retention, in whole radix-tree nodes (100 per node).
    for i in range(1, 301):
        reader.xadd(key, {"v": "old"}, id=f"{i}-0")
    exporter = RedisStreamSpanExporter(settings)
    exporter.export(make_spans(1))
    remaining = reader.xrange(key)
    assert len(remaining) < 300
    assert remaining[-1][1][b"v"] == wire.WIRE_VERSION

    # Hard cap: 2500 fresh entries; the periodic XTRIM MAXLEN ~ 1000 rides along with a write.
    pipe = reader.pipeline(transaction=False)
    for _ in range(2500):
        pipe.xadd(key, {"v": "fresh"})
    pipe.execute()
    exporter._next_trim = 0.0  # the next write is due for the cap
    exporter.export(make_spans(1))
    assert 1000 <= reader.xlen(key) < 1200
    exporter.shutdown()


def test_redis_down_spools_then_replays_in_order(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as server:
        settings = settings.with_overrides(
            redis_url=server.url, spool_dir=tmp_path / "spool", export_timeout_s=0.3
        )
        exporter = RedisStreamSpanExporter(settings)
        key = stream_keys(settings)[0]
        assert exporter.export(make_spans(2, prefix="a")) is SpanExportResult.SUCCESS
        server.kill()
        assert exporter.export(make_spans(2, prefix="b")) is SpanExportResult.SUCCESS  # spooled is safe
        assert exporter.export(make_spans(2, prefix="c")) is SpanExportResult.SUCCESS
        assert exporter.spooled_batches == 2
        assert exporter.stats.spans_spooled == 4
        assert exporter.stats.retries >= 1
        server.start()  # no persistence: the "a" batch is gone with the old server
        exporter._down_until = 0.0  # do not wait out the probe interval
        assert exporter.export(make_spans(2, prefix="d")) is SpanExportResult.SUCCESS
        assert exporter.spooled_batches == 0
        client = _client(server.url)
        assert stream_span_names(client, key) == ["b-0", "b-1", "c-0", "c-1", "d-0", "d-1"]
        counters = client.hgetall(stats_key(settings, "exporter"))
        assert counters[b"spans_spooled"] == b"4"
        assert counters[b"spans_replayed"] == b"4"
        exporter.shutdown()
        assert not list((tmp_path / "spool").rglob("*.batch"))


def test_past_the_spool_bound_spans_are_dropped_counted_and_logged_without_values(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with private_redis(tmp_path / "redis") as server:
        probe = make_spans(50, users=(RAW_ID,))
        one_batch = len(wire.encode_readable_spans(probe, exporter_guard(settings))) + 200
        settings = settings.with_overrides(
            redis_url=server.url,
            spool_dir=tmp_path / "spool",
            export_timeout_s=0.2,
            spool_max_bytes=one_batch,
        )
        exporter = RedisStreamSpanExporter(settings)
        server.kill()
        caplog.set_level(logging.WARNING)
        assert exporter.export(probe) is SpanExportResult.SUCCESS
        assert exporter.export(probe) is SpanExportResult.FAILURE
        assert exporter.spans_dropped == 50
        assert exporter.stats.spans_spooled == 50
        assert "dropped 50 spans" in caplog.text
        assert RAW_ID not in caplog.text
        assert "studyin.xp" not in caplog.text
        server.start()
        assert exporter.force_flush(5000)
        assert len(stream_span_names(_client(server.url), stream_keys(settings)[0])) == 50
        exporter.shutdown()


def exporter_guard(settings: Settings):  # type: ignore[no-untyped-def]
    from studyin_analytics.exporter.redis_exporter import default_guard

    return default_guard(settings)


def test_shutdown_drains_the_spool_and_a_leftover_spool_is_adopted(
    settings: Settings, tmp_path: Path
) -> None:
    with private_redis(tmp_path / "redis") as server:
        settings = settings.with_overrides(
            redis_url=server.url, spool_dir=tmp_path / "spool", export_timeout_s=0.2
        )
        key = stream_keys(settings)[0]
        first = RedisStreamSpanExporter(settings)
        server.kill()
        first.export(make_spans(3, prefix="x"))
        assert not first.force_flush(500)  # Redis still down: nothing drained
        first.shutdown()  # files stay on disk, the lock is released
        assert len(list((tmp_path / "spool").rglob("*.batch"))) == 1

        server.start()
        second = RedisStreamSpanExporter(settings)  # adopts the finished process's spool
        assert second.spooled_batches == 1
        second.export(make_spans(1, prefix="y"))
        assert stream_span_names(_client(server.url), key) == ["x-0", "x-1", "x-2", "y-0"]
        second.shutdown()

        third = RedisStreamSpanExporter(settings)
        server.kill()
        third.export(make_spans(2, prefix="z"))
        server.start()
        third.shutdown()  # drains while Redis is back
        assert stream_span_names(_client(server.url), key)[-2:] == ["z-0", "z-1"]
        assert not list((tmp_path / "spool").rglob("*.batch"))


def test_fork_gets_its_own_connection_and_spool(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as server:
        settings = settings.with_overrides(
            redis_url=server.url, spool_dir=tmp_path / "spool", export_timeout_s=0.2
        )
        key = stream_keys(settings)[0]
        exporter = RedisStreamSpanExporter(settings)
        exporter.export(make_spans(1, prefix="parent-before"))
        server.kill()
        exporter.export(make_spans(1, prefix="parent-spooled"))
        assert exporter.spooled_batches == 1
        parent_dir = {p.parent for p in (tmp_path / "spool").rglob("*.batch")}
        spans = make_spans(1, prefix="child")
        pid = os.fork()
        if pid == 0:  # the child: never touch the parent's spool, spool into its own
            code = 1
            try:
                ok = exporter.spooled_batches == 0 and exporter._pid == os.getpid()
                exporter.export(spans)
                dirs = {p.parent for p in (tmp_path / "spool").rglob("*.batch")}
                ok = ok and exporter.spooled_batches == 1 and len(dirs - parent_dir) == 1
                code = 0 if ok else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert exporter.spooled_batches == 1  # the parent's own, untouched
        server.start()
        assert exporter.force_flush(5000)
        exporter.shutdown()
        # The child exited without shutting down: its spool is adopted by the next exporter.
        adopter = RedisStreamSpanExporter(settings)
        assert adopter.force_flush(5000)
        adopter.shutdown()
        assert sorted(stream_span_names(_client(server.url), key)) == ["child-0", "parent-spooled-0"]


def test_raw_user_ids_are_hashed_before_redis(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(spool_dir=tmp_path)
    capture = Capture()
    provider = TracerProvider()
    provider.add_span_processor(capture)
    with provider.get_tracer("t").start_as_current_span(
        "raw", attributes={"user.id": RAW_ID, "user.email": "someone@example.org"}
    ):
        pass
    exporter = RedisStreamSpanExporter(settings)
    exporter.export(capture.spans)
    exporter.shutdown()
    client = _client(settings.redis_url or "")
    (_, fields), *_ = client.xrange(stream_keys(settings)[0])
    (record,) = wire.decode_entry(fields)
    assert record.attributes == {"user.hash": Pseudonymizer.from_settings(settings).pseudonymize(RAW_ID)}
    assert RAW_ID.encode() not in fields[b"d"]


def test_spool_is_replayed_in_the_background_when_no_span_comes(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as server:
        settings = settings.with_overrides(
            redis_url=server.url, spool_dir=tmp_path / "spool", export_timeout_s=0.2
        )
        exporter = RedisStreamSpanExporter(settings)
        server.kill()
        exporter.export(make_spans(2, prefix="idle"))
        assert exporter.spooled_batches == 1
        server.start()
        deadline = time.monotonic() + 15
        while exporter.spooled_batches and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exporter.spooled_batches == 0
        assert stream_span_names(_client(server.url), stream_keys(settings)[0]) == ["idle-0", "idle-1"]
        exporter.shutdown()
