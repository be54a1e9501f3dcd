"""The Redis ACL of docs/production.md, on a real Redis Cluster: enough, and each cluster rule needed.

ACL users are per node (a cluster does not replicate them), so the fixture creates them on every
node, primaries and replicas, and turns the ``default`` user off everywhere: nothing below can
work unless it runs as the ACL user its URL names. The rules are read from the docs themselves
(the "least privilege in Redis" row of production.md, whose cluster addition bus.md repeats), so
the test and the docs cannot drift apart.

What a missing rule looks like from outside: the client turns the NOPERM of ``CLUSTER SLOTS``
into "Cluster mode is not enabled on this node"; the NOPERM stays in the exception chain (and in
the node's ``ACL LOG``), and the services find it there and print it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.service import Aggregator
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import migrate
from studyin_analytics.exporter import RedisStreamSpanExporter, wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.connection import async_client, sync_client
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.cluster import CLI, SHARDS, cli_env
from tests.support.cluster_acl import (
    ACL,
    APP_PASSWORD,
    TRANSACTION_RULES,
    AclCluster,
    admin,
    as_user,
    command_of,
    without,
)
from tests.support.workload import build, mismatches, truth_of


def acl_settings(settings: Settings, cluster: AclCluster, user: str, tmp_path: Path) -> Settings:
    """The test's settings (own schema) as a service on the cluster under ``user``; the stream
    prefix lies inside the documented key pattern."""
    return settings.with_overrides(
        redis_url=cluster.url(user),
        redis_cluster=True,
        stream_shards=SHARDS,
        stream_prefix=f"{ACL.key_prefix}:{settings.stream_prefix.rsplit(':', 1)[-1]}",
        spool_dir=tmp_path / "spool",
    )


def readable(records: list[wire.SpanRecord]) -> list[ReadableSpan]:
    """The workload's spans as the SDK hands them to an exporter."""
    resources: dict[int, Resource] = {}
    spans: list[ReadableSpan] = []
    for record in records:
        resource = resources.setdefault(id(record.resource), Resource(record.resource))
        context = SpanContext(
            int.from_bytes(record.trace_id, "big"), int.from_bytes(record.span_id, "big"), False
        )
        parent = (
            None
            if record.parent_span_id is None
            else SpanContext(context.trace_id, int.from_bytes(record.parent_span_id, "big"), False)
        )
        spans.append(
            ReadableSpan(
                name=record.name,
                context=context,
                parent=parent,
                resource=resource,
                attributes=record.attributes,
                events=[Event(e.name, e.attributes, e.time_unix_nano) for e in record.events],
                kind=SpanKind(record.kind),
                status=Status(StatusCode(record.status_code)),
                start_time=record.start_unix_nano,
                end_time=record.end_unix_nano,
            )
        )
    return spans


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(settings) | {"COLUMNS": "300"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def refused_with_noperm(exc: BaseException, command: str) -> bool:
    return any(
        isinstance(e, redis.exceptions.NoPermissionError) and f"'{command}'" in str(e) for e in causes(exc)
    )


def spans_of_a_small_workload(settings: Settings) -> list[ReadableSpan]:
    wl = build(Pseudonymizer.from_settings(settings), users=3, seed=5)
    return readable([record for fields in wl.entries for record in wire.decode_entry(fields)])


def test_default_user_is_off_on_every_node(acl_cluster: AclCluster) -> None:
    """So whatever works below ran as the user its URL names."""
    for address in acl_cluster.addresses:
        client = as_user(address, None, None)
        try:
            with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
                client.ping()
        finally:
            client.close()


async def test_services_run_under_the_documented_acl_user(
    settings: Settings, acl_cluster: AclCluster, tmp_path: Path
) -> None:
    """Exporter -> sharded streams -> aggregator (a dead letter included) -> exact rollups, and
    ``bus stats``, all as the documented user on the 6-node cluster; no node refused a command."""
    s = acl_settings(settings, acl_cluster, ACL.user, tmp_path)
    acl_cluster.reset_acl_log()
    await asyncio.to_thread(migrate, s)
    wl = build(Pseudonymizer.from_settings(s), users=80, seed=53, spans_per_entry=25)
    spans = readable([record for fields in wl.entries for record in wire.decode_entry(fields)])

    exporter = RedisStreamSpanExporter(s)
    try:
        for i in range(0, len(spans), 100):
            assert exporter.export(spans[i : i + 100]) == SpanExportResult.SUCCESS
        assert exporter.spooled_batches == 0, "the exporter spooled: the cluster refused its writes"
    finally:
        exporter.shutdown()

    # An undecodable entry, written as the same user: moving it to its shard's dead-letter stream
    # (XADD + XACK in one MULTI/EXEC) must be allowed too.
    client = RedisCluster.from_url(s.redis_url or "", socket_timeout=5, socket_connect_timeout=2)
    try:
        client.xadd(stream_keys(s)[1], {b"v": b"1", b"n": b"1", b"d": b"\xc1 not msgpack"})
    finally:
        client.close()

    async with Aggregator(s) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
        status = await aggregator.status()
    assert status["last_error"] is None, status["last_error"]
    assert totals.dead_lettered == 1 and totals.events_inserted == wl.event_count
    assert status["lag"] == 0 and status["pending"] == 0 and status["dead_letter_length"] == 1
    conn = await connect(s)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
    finally:
        await conn.close()

    stats = await asyncio.to_thread(run_cli, s, "bus", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    document = json.loads(stats.stdout)
    assert [stream["key"] for stream in document["streams"]] == stream_keys(s)
    assert document["totals"]["spans_exported"] == len(spans)  # the exporter's counters, found by SCAN
    assert document["dead_letter_length"] == 1
    groups = [group for stream in document["streams"] for group in stream["groups"]]
    assert len(groups) == SHARDS and all(g["lag"] == 0 and g["pending"] == 0 for g in groups), groups

    refused = {address: entries for address, entries in acl_cluster.acl_log().items() if entries}
    assert refused == {}, f"commands the documented ACL refused (retried or swallowed): {refused}"
    for address in acl_cluster.addresses:  # and nothing was written outside the user's prefix
        node = admin(address)
        try:
            outside = [
                k for k in node.scan_iter(count=1000) if not k.decode().startswith(f"{s.stream_prefix}:")
            ]
        finally:
            node.close()
        assert outside == [], (address, outside)


@pytest.mark.parametrize("rule", ACL.cluster_rules)
async def test_each_cluster_rule_is_needed(
    rule: str, settings: Settings, acl_cluster: AclCluster, tmp_path: Path
) -> None:
    """A user with every documented rule but ``rule``: each node refuses the command with NOPERM,
    and the exporter, ``bus stats`` and the aggregator cannot work (NOPERM behind their errors)."""
    user = without(rule)
    command = rule[1:]  # as Redis names it in its answers and its ACL LOG: cluster|slots
    s = acl_settings(settings, acl_cluster, user, tmp_path)
    acl_cluster.reset_acl_log()
    for address in acl_cluster.addresses:
        node = as_user(address, user, APP_PASSWORD)
        try:
            with pytest.raises(redis.exceptions.NoPermissionError, match=re.escape(f"'{command}'")):
                node.execute_command(*command_of(rule))
        finally:
            node.close()

    with pytest.raises(RedisClusterException) as sync_error:
        sync_client(s, socket_timeout=5, socket_connect_timeout=2).close()
    assert refused_with_noperm(sync_error.value, command), causes(sync_error.value)

    exporter = RedisStreamSpanExporter(s)
    try:
        exporter.export(spans_of_a_small_workload(s))
        assert exporter.spooled_batches > 0, "the exporter wrote without the rule"
    finally:
        exporter.shutdown()

    stats = await asyncio.to_thread(run_cli, s, "bus", "stats", "--json")
    assert stats.returncode == 1, stats.stdout

    await asyncio.to_thread(migrate, s)
    with pytest.raises(RedisClusterException) as async_error:
        async with Aggregator(s) as aggregator:
            await aggregator.drain(timeout_s=10)
    assert refused_with_noperm(async_error.value, command), causes(async_error.value)

    refused = {
        (entry["username"], entry["object"])
        for entries in acl_cluster.acl_log().values()
        for entry in entries
    }
    assert refused == {(user, command)}, refused


def test_cli_names_the_refused_cluster_command(
    settings: Settings, acl_cluster: AclCluster, tmp_path: Path
) -> None:
    rule = ACL.cluster_rules[0]
    stats = run_cli(acl_settings(settings, acl_cluster, without(rule), tmp_path), "bus", "stats")
    assert stats.returncode == 1
    assert "no permissions" in stats.stdout + stats.stderr and rule[1:] in stats.stdout + stats.stderr


async def test_dead_lettering_needs_multi_and_exec(
    settings: Settings, acl_cluster: AclCluster, tmp_path: Path
) -> None:
    """Why the documented line grants ``+multi +exec``: without them the aggregator cannot move an
    undecodable entry to the dead letter and stops on the NOPERM."""
    assert all(rule in ACL.rules for rule in TRANSACTION_RULES), ACL.rules
    s = acl_settings(settings, acl_cluster, without("multi-exec"), tmp_path)
    await asyncio.to_thread(migrate, s)
    client = async_client(s, socket_timeout=5, socket_connect_timeout=2)
    try:
        await client.xadd(stream_keys(s)[0], {b"v": b"1", b"n": b"1", b"d": b"\xc1 not msgpack"})
    finally:
        await client.aclose()
    with pytest.raises(redis.exceptions.NoPermissionError, match="'multi'"):
        async with Aggregator(s) as aggregator:
            await aggregator.drain(timeout_s=30)
