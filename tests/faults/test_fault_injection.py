"""Proof by fault injection: real ``studyin-analytics aggregator`` processes, real servers.

A known workload (tens of thousands of events from a few hundred users, in the real wire
format) is pushed while aggregator processes are SIGKILLed and restarted, PostgreSQL or
Redis is restarted, poison entries are injected, or three aggregators share the group.
Afterwards every rollup must equal the ground truth computed independently
(``workload.truth_of``). Correctness never depends on timing: waits are bounded and only
decide how long to wait for the group to drain.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
)
from studyin_analytics.aggregator.storage.schema import migrate
from studyin_analytics.exporter.bus import dead_letter_key, stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.aggregator_group import aggregators, check_exact
from tests.support.workload import Workload, bad_spans, build, with_spans

pytestmark = pytest.mark.slow

USERS = 600


def pusher(
    url: str, stream: str, entries: list[dict[Any, Any]], per_tick: int, tick_s: float
) -> Iterator[int]:
    """Push ``per_tick`` entries per step (a generator: the test interleaves faults)."""
    client = redis.Redis.from_url(url)
    try:
        for i in range(0, len(entries), per_tick):
            for attempt in range(200):  # Redis may be restarting: retry the step, bounded
                try:
                    pipe = client.pipeline(transaction=False)
                    for fields in entries[i : i + per_tick]:
                        pipe.xadd(stream, fields)
                    pipe.execute()
                    break
                except redis.ConnectionError:
                    if attempt == 199:
                        raise
                    time.sleep(0.1)
            time.sleep(tick_s)
            yield i + per_tick
    finally:
        client.close()


def wait_drained(url: str, stream: str, group: str, timeout_s: float = 120.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    info: Any = None
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                groups = client.xinfo_groups(stream)
                info = next((g for g in groups if g["name"].decode() == group), None)
                if info is not None and info["pending"] == 0:
                    lag = info.get("lag")
                    if lag is None:  # Redis < 7 (the embedded one): compare with the last id
                        lag = (
                            0
                            if info["last-delivered-id"] == client.xinfo_stream(stream)["last-generated-id"]
                            else 1
                        )
                    if lag == 0:
                        return
            time.sleep(0.2)
    finally:
        client.close()
    raise AssertionError(f"group {group} not drained after {timeout_s}s: {info}")


def wait_members(url: str, stream: str, group: str, members: int, timeout_s: float = 60.0) -> None:
    """Wait until ``members`` consumers have joined ``group`` (bounded)."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ResponseError):
                if len(client.xinfo_consumers(stream, group)) >= members:
                    return
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError(f"{members} consumers did not join {group} within {timeout_s}s")


def dead_letters(settings: Settings) -> list[dict[bytes, bytes]]:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return [fields for _, fields in client.xrange(dead_letter_key(settings))]
    finally:
        client.close()


def workload(settings: Settings, seed: int) -> Workload:
    wl = build(Pseudonymizer.from_settings(settings), users=USERS, seed=seed, spans_per_entry=25)
    assert wl.event_count >= 20_000, wl.event_count
    return wl


def with_bad_events(settings: Settings, wl: Workload, seed: int, mixed: int) -> tuple[Workload, list[Any]]:
    """``wl`` plus another workload whose first ``mixed`` entries carry four bad events each (see
    ``workload.bad_spans``), spread over the entries; returns the good events and the entries."""
    pseudonymizer = Pseudonymizer.from_settings(settings)
    other = build(pseudonymizer, users=6, seed=seed, spans_per_entry=10)
    assert len(other.entries) > mixed
    entries = list(wl.entries)
    extra = [with_spans(e, bad_spans(pseudonymizer)) if i < mixed else e for i, e in enumerate(other.entries)]
    for i, entry in enumerate(extra):
        entries.insert((i + 1) * len(entries) // (len(extra) + 1), entry)
    return wl + other, entries


def check_event_dead_letters(settings: Settings, mixed: int) -> None:
    """One dead letter per entry with bad events, each listing its four: none lost, none twice."""
    letters = [d for d in dead_letters(settings) if b"events" in d]
    assert len(letters) == mixed, [d[b"error"] for d in letters]
    assert len({d[b"source_id"] for d in letters}) == mixed
    assert all(len(json.loads(d[b"events"])) == 4 for d in letters)


def test_sigkilled_aggregator_restarts_keep_rollups_exact(settings: Settings, tmp_path: Path) -> None:
    migrate(settings)
    # Three entries mix good events with bad ones: the good count, the bad are dead-lettered once.
    wl, entries = with_bad_events(settings, workload(settings, seed=21), seed=121, mixed=3)
    stream = stream_keys(settings)[0]
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    ticks = 40
    per_tick = -(-len(entries) // ticks)
    kill_ticks = sorted(rng.sample(range(2, ticks - 2), 4))
    with aggregators(settings, tmp_path) as group:
        group.start("agg-1")
        for step, _ in enumerate(pusher(settings.redis_url or "", stream, entries, per_tick, 0.15)):
            if step in kill_ticks:
                time.sleep(rng.uniform(0, 0.3))  # a random moment: reading, committing or acking
                group.kill("agg-1")
                group.start("agg-1")  # the same stable name: its pending entries come first
        # One more kill once everything is on the bus.
        time.sleep(rng.uniform(0.2, 1.0))
        group.kill("agg-1")
        group.start("agg-1")
        wait_drained(settings.redis_url or "", stream, settings.consumer_group)
        codes = group.terminate_all()
        assert group.kills >= 3
        assert codes == {"agg-1": 0}, group.log_tail()
        check_event_dead_letters(settings, mixed=3)
        assert check_exact(settings, wl) == [], group.log_tail()


def restart_after_crash(postgres: EmbeddedPostgres) -> None:
    """Start a SIGKILLed server again; its orphaned backends may take a moment to go (bounded)."""
    for attempt in range(20):
        try:
            postgres.start()
            return
        except EmbeddedServerError:
            if attempt == 19:
                raise
            time.sleep(0.5)


def test_postgres_restart_mid_run(settings: Settings, tmp_path: Path) -> None:
    pg_dir = tmp_path / "pg"
    pg_dir.mkdir()
    postgres = EmbeddedPostgres(pg_dir)  # private: the shared server is never touched
    postgres.start()
    try:
        settings = settings.with_overrides(postgres_url=postgres.url)
        migrate(settings)
        wl = workload(settings, seed=22)
        stream = stream_keys(settings)[0]
        ticks = 30
        per_tick = -(-len(wl.entries) // ticks)
        with aggregators(settings, tmp_path) as group:
            group.start("agg-1")
            # Unreachable at start-up is a configuration error (exit 1): crash PostgreSQL only
            # once the aggregator is consuming, which is what this test is about.
            group.wait_ready()
            for step, _ in enumerate(pusher(settings.redis_url or "", stream, wl.entries, per_tick, 0.15)):
                if step == 8:
                    postgres.kill()  # a crash mid-run, then recovery
                    time.sleep(1.0)
                    restart_after_crash(postgres)
                if step == 20:
                    postgres.restart()  # and an orderly restart
            wait_drained(settings.redis_url or "", stream, settings.consumer_group)
            codes = group.terminate_all()
            assert codes == {"agg-1": 0}, group.log_tail()
            assert dead_letters(settings) == []
            assert check_exact(settings, wl) == [], group.log_tail()
    finally:
        postgres.stop()


def test_three_aggregators_with_poison_entries_and_a_dead_member(settings: Settings, tmp_path: Path) -> None:
    migrate(settings)
    # Two entries with four bad events each among good ones: only the bad are dead-lettered.
    wl, entries = with_bad_events(settings, workload(settings, seed=23), seed=99, mixed=2)
    undecodable = {b"v": b"1", b"n": b"3", b"d": b"\xc1 not msgpack"}  # dead-lettered whole, at once
    entries.insert(len(entries) // 3, undecodable)
    held_back, entries = entries[-4:], entries[:-4]
    stream = stream_keys(settings)[0]
    ticks = 30
    per_tick = -(-len(entries) // ticks)
    with aggregators(settings, tmp_path, STUDYIN_ANALYTICS_MAX_DELIVERY_ATTEMPTS="4") as group:
        for name in ("agg-a", "agg-b", "agg-c"):
            group.start(name)
        wait_members(settings.redis_url or "", stream, settings.consumer_group, 3)
        for step, _ in enumerate(pusher(settings.redis_url or "", stream, entries, per_tick, 0.15)):
            if step == 12:
                group.kill("agg-c")  # never restarted: the others XAUTOCLAIM its pending entries
                client = redis.Redis.from_url(settings.redis_url or "")
                try:  # make sure it died holding entries: added and read by it atomically
                    pipe = client.pipeline(transaction=True)
                    for fields in held_back:
                        pipe.xadd(stream, fields)
                    pipe.xreadgroup(settings.consumer_group, "agg-c", {stream: ">"}, count=len(held_back))
                    held = pipe.execute()[-1]
                    assert held and len(held[0][1]) == len(held_back)
                finally:
                    client.close()
        wait_drained(settings.redis_url or "", stream, settings.consumer_group)
        codes = group.terminate_all()
        assert codes == {"agg-a": 0, "agg-b": 0, "agg-c": -signal.SIGKILL}, group.log_tail()
        dead = dead_letters(settings)
        assert len(dead) == 3, [d.get(b"error") for d in dead]
        assert [d[b"d"] for d in dead if b"events" not in d] == [undecodable[b"d"]]
        assert all(d[b"error"] for d in dead)
        check_event_dead_letters(settings, mixed=2)
        assert check_exact(settings, wl) == [], group.log_tail()
        # The dead member's entries were taken over by the live ones.
        logs = (tmp_path / "agg-a.log").read_text() + (tmp_path / "agg-b.log").read_text()
        assert "claimed" in logs, group.log_tail()


def test_redis_restart_and_lost_group(settings: Settings, tmp_path: Path) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = EmbeddedRedis(redis_dir, appendonly=True)  # private, AOF persistence
    server.start()
    try:
        settings = settings.with_overrides(redis_url=server.url)
        migrate(settings)
        wl = workload(settings, seed=24)
        stream = stream_keys(settings)[0]
        ticks = 30
        per_tick = -(-len(wl.entries) // ticks)
        with aggregators(settings, tmp_path) as group:
            group.start("agg-1")
            group.wait_ready()  # else, on a busy machine, the group may not exist yet at step 18
            for step, _ in enumerate(pusher(server.url, stream, wl.entries, per_tick, 0.15)):
                if step == 8:
                    server.restart()  # orderly: the AOF keeps the stream and the group
                if step == 18:
                    client = redis.Redis.from_url(server.url)
                    try:  # a Redis that came back without the group (NOGROUP on the next read)
                        assert client.xgroup_destroy(stream, settings.consumer_group)
                    finally:
                        client.close()
            wait_drained(server.url, stream, settings.consumer_group)
            codes = group.terminate_all()
            assert codes == {"agg-1": 0}, group.log_tail()
            assert "recreating it" in (tmp_path / "agg-1.log").read_text(), group.log_tail()
            assert check_exact(settings, wl) == [], group.log_tail()
    finally:
        server.stop()
