"""Exporter, gateway, aggregator and bus reads against a real Redis Cluster.

Each shard stream must live on the primary its hash tag names, the shards must spread over
every primary, and the rollups must equal the ground truth of ``tests/support/workload/truth.py``
exactly as on one server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.sdk.trace.export import SpanExportResult
from redis.crc import key_slot

from studyin_analytics.aggregator.consumer.service import Aggregator
from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedisCluster
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import migrate
from studyin_analytics.exporter import RedisStreamSpanExporter, wire
from studyin_analytics.exporter.bus import (
    between,
    cluster_tags,
    dead_letter_key,
    dead_letter_keys,
    recent,
    shard_index,
    stream_keys,
)
from studyin_analytics.exporter.connection import async_client
from studyin_analytics.exporter.gateway.app import Gateway
from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.cluster import (
    CLI,
    SHARDS,
    bus_entries,
    cli_env,
    cluster_client,
    node_client,
    records_of,
    slot_owners,
)
from tests.support.exporter import make_spans
from tests.support.workload import build, mismatches, truth_of

USERS = [f"t1:{i:032x}" for i in range(40)]


def shard_key(record: wire.SpanRecord) -> Any:
    """What writers shard by: the span's (or its first event's) user pseudonym, else its trace id."""
    value = record.attributes.get(semconv.USER_HASH)
    for event in record.events:
        if value is None:
            value = event.attributes.get(semconv.USER_HASH)
    return record.trace_id if value is None else value


def assert_sharded(settings: Settings, entries: dict[str, list[tuple[bytes, dict[bytes, bytes]]]]) -> None:
    """Every record sits on the stream of its user's shard."""
    keys = stream_keys(settings)
    for key, stream_entries in entries.items():
        for record in records_of(stream_entries):
            assert keys[shard_index(shard_key(record), SHARDS)] == key


async def test_gateway_writes_aggregator_consumes_rollups_exact(
    cluster_settings: Settings, redis_cluster: EmbeddedRedisCluster
) -> None:
    settings = cluster_settings
    await asyncio.to_thread(migrate, settings)
    wl = build(Pseudonymizer.from_settings(settings), users=150, seed=31, spans_per_entry=25)
    records = [record for fields in wl.entries for record in wire.decode_entry(fields)]
    gateway = Gateway(settings)
    await gateway.open()
    try:
        for i in range(0, len(records), 200):  # one pipelined round trip per node and request
            await gateway.write(records[i : i + 200])
    finally:
        await gateway.close()
    # An undecodable entry on one shard: dead-lettered into that shard's dead-letter stream,
    # XADD + XACK in one MULTI (both keys share the shard's hash tag, so the same slot).
    poisoned = stream_keys(settings)[2]
    client = cluster_client(settings)
    try:
        poison_id = client.xadd(poisoned, {b"v": b"1", b"n": b"3", b"d": b"\xc1 not msgpack"})
    finally:
        client.close()

    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
        status = await aggregator.status()
    assert totals.dead_lettered == 1
    assert status["lag"] == 0 and status["pending"] == 0 and status["dead_letter_length"] == 1

    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
    finally:
        await conn.close()

    entries = {
        key: [(entry_id, fields) for entry_id, fields in stream if entry_id != poison_id]
        for key, stream in bus_entries(settings).items()
    }
    assert sum(len(records_of(e)) for e in entries.values()) == len(records)
    assert_sharded(settings, entries)

    # Placement: each stream is in the slot of its tag, on the primary owning that slot, and
    # only there (a plain client on another primary gets MOVED); every primary holds shards.
    owners = slot_owners(redis_cluster.primaries()[0])
    holders = set()
    for key, tag in zip(stream_keys(settings), cluster_tags(SHARDS), strict=True):
        assert key.endswith("{" + tag + "}")
        slot = key_slot(key.encode())
        assert slot == key_slot(tag.encode()) == key_slot(dead_letter_key(settings, key).encode())
        owner = owners[slot]
        holders.add(owner)
        direct = node_client(owner)
        try:
            assert direct.exists(key) == 1
        finally:
            direct.close()
    assert holders == set(redis_cluster.primaries())

    dead = cluster_client(settings)
    try:
        lengths = {key: dead.xlen(key) for key in dead_letter_keys(settings)}
        (_, fields), *_ = dead.xrange(dead_letter_key(settings, poisoned))
    finally:
        dead.close()
    assert lengths == {key: int(key == dead_letter_key(settings, poisoned)) for key in lengths}
    assert fields[b"source_stream"] == poisoned.encode() and fields[b"error"]


def test_exporter_shards_by_user_one_entry_per_shard(cluster_settings: Settings) -> None:
    settings = cluster_settings
    exporter = RedisStreamSpanExporter(settings)
    try:
        spans = make_spans(120, prefix="x", users=USERS)
        for i in range(0, len(spans), 40):
            assert exporter.export(spans[i : i + 40]) == SpanExportResult.SUCCESS
        assert exporter.spooled_batches == 0
    finally:
        exporter.shutdown()
    entries = bus_entries(settings)
    assert sum(len(records_of(e)) for e in entries.values()) == 120
    assert_sharded(settings, entries)
    # One entry per export call and shard touched (3 calls, 40 users over 6 shards: all touched).
    assert all(len(e) == 3 for e in entries.values()), {k: len(e) for k, e in entries.items()}


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(settings) | {"COLUMNS": "300"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


async def test_bus_reads_and_cli_on_the_cluster(cluster_settings: Settings) -> None:
    settings = cluster_settings
    exporter = RedisStreamSpanExporter(settings)
    started = datetime.now(UTC) - timedelta(seconds=1)
    try:
        assert exporter.export(make_spans(60, prefix="r", users=USERS)) == SpanExportResult.SUCCESS

        stats = run_cli(settings, "bus", "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        document = json.loads(stats.stdout)
        assert [s["key"] for s in document["streams"]] == stream_keys(settings)
        assert sum(s["length"] for s in document["streams"]) == SHARDS  # one entry per shard
        assert document["dead_letter_length"] == 0
        assert document["totals"]["spans_exported"] == 60  # the exporter's counters, found by SCAN
        assert any(name.startswith("exporter:") for name in document["writers"])

        listing = run_cli(settings, "bus", "recent", "xp_awarded", "-n", "7")
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.count("xp_awarded") >= 7, listing.stdout

        client = async_client(settings, socket_timeout=5, socket_connect_timeout=2)
        try:
            newest = await recent(client, settings, "xp_awarded", 10)
            assert len(newest) == 10
            assert [e.time for e in newest] == sorted((e.time for e in newest), reverse=True)
            window = await between(client, settings, started, datetime.now(UTC) + timedelta(seconds=1))
            assert len([e for e in window if e.event_type == "xp_awarded"]) == 60
            assert {e.stream for e in window} == set(stream_keys(settings))
        finally:
            await client.aclose()

        # A live tail over every shard: keep writing until it has printed what it waits for.
        tail = subprocess.Popen(  # noqa: ASYNC220 - polled below without blocking the loop long
            [*CLI, "bus", "tail", "xp_awarded", "--count", "12", "--seconds", "30"],
            env=cli_env(settings) | {"COLUMNS": "300"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while tail.poll() is None and time.monotonic() < deadline:
            assert exporter.export(make_spans(12, prefix="t", users=USERS)) == SpanExportResult.SUCCESS
            await asyncio.sleep(0.5)
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        assert out.count("xp_awarded") == 12, out
    finally:
        exporter.shutdown()
