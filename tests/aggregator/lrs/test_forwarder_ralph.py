"""The forwarder against a real LRS (Ralph): SIGKILLed mid-run again and again while the LRS answers 503 for a
while, the LRS ends with each statement exactly once; a statement the LRS rejects goes to the dead-letter
stream with Ralph's reason while the others flow; an event that gives no valid statement is dead-lettered
with the field; the bus trimmed past the forwarder's cursor is caught up from PostgreSQL's raw events."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.lrs import keys
from studyin_analytics.aggregator.lrs.forwarder import Forwarder
from studyin_analytics.aggregator.lrs.xapi import Skipped
from studyin_analytics.exporter.bus import group_lag, stream_keys
from studyin_analytics.instrumentation import semconv
from tests.support.lrs.forwarding import (
    MAPPER,
    PSEUDONYMIZER,
    flaky_proxy,
    forwarder_environment,
    learning_emissions,
    lrs_settings,
    publish,
    publish_spans,
)
from tests.support.lrs.ralph import RalphServer, as_sent

pytestmark = pytest.mark.timeout(1200)  # the first test of a machine creates Ralph's venv


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, tail: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{tail()}")


def group_behind(settings: Settings, group: str) -> int:
    from studyin_analytics.exporter.connection import async_client

    async def probe() -> int:
        client = async_client(settings, socket_timeout=5, socket_connect_timeout=5)
        try:
            total = 0
            for stream in stream_keys(settings):
                lag = await group_lag(client, stream, group)
                total += lag.behind if lag is not None else 1
            return total
        finally:
            await client.aclose()

    return asyncio.run(probe())


class ForwarderProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = {**os.environ, **env}, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "studyin_analytics.aggregator.cli",
                    "lrs-forward",
                    "--consumer-name",
                    "f1",
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def test_sigkills_and_a_503_spell_leave_each_statement_exactly_once(
    migrated: Settings, fresh_ralph: RalphServer, tmp_path: Path
) -> None:
    with flaky_proxy(fresh_ralph.url) as proxy:
        settings = lrs_settings(migrated, proxy.url, fresh_ralph, lrs_read_entries=4, lrs_batch_statements=7)
        published = publish(migrated, learning_emissions(400), spans_per_entry=5)
        expected = published.statement_ids
        assert len(expected) == 400
        process = ForwarderProcess(forwarder_environment(settings), tmp_path / "forwarder.log")
        rng = random.Random(7)

        def stored() -> int:
            return sum(1 for i in fresh_ralph.stored_ids() if i in expected)

        process.start()
        for round_ in range(4):
            target = (round_ + 1) * len(expected) // 6
            wait_for(lambda t=target: stored() >= t, 240, f"{target} statements stored", process.tail)
            time.sleep(rng.random() * 0.5)
            process.kill()  # SIGKILL: no chance to acknowledge what it just delivered
            if round_ == 1:
                proxy.down.set()  # the LRS answers 503 for a while, across a restart
            process.start()
            if round_ == 1:  # several retries answered 503 (backoff 0.2, 0.4, 0.8 s...), then it is back
                wait_for(lambda: proxy.answered_503 >= 4, 60, "503 answers", process.tail)
                proxy.down.clear()
            published += publish(migrated, learning_emissions(40), spans_per_entry=3)
            expected = published.statement_ids
        wait_for(lambda: stored() == len(expected), 300, "every statement stored", process.tail)
        wait_for(lambda: group_behind(migrated, settings.lrs_consumer_group) == 0, 60, "lag 0", process.tail)
        assert process.stop() == 0, process.tail()

    assert process.kills >= 3 and proxy.answered_503 >= 4
    counts = fresh_ralph.stored_ids()
    assert {i: n for i, n in counts.items() if i in expected and n != 1} == {}
    assert set(counts) == expected
    # What the LRS holds is what the mapping gives, byte for byte (spot check through GET).
    for row in rng.sample(published.rows, 10):
        statement = MAPPER.map(row)
        assert not isinstance(statement, Skipped)
        assert as_sent(fresh_ralph.get(statement["id"]) or {}) == statement
    client = redis.Redis.from_url(migrated.redis_url or "")
    try:
        assert client.xlen(keys.dead_letter_key(migrated, stream_keys(migrated)[0])) == 0
    finally:
        client.close()


def invalid_rating_spans() -> list[Any]:
    """A span carrying an ai_coach_feedback whose rating is out of range: it passes the guard (a declared
    int) and the bus, and gives no valid statement."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("studyin.event") as span:
        span.add_event(
            semconv.event_name("ai_coach_feedback"),
            {
                **PSEUDONYMIZER.identity("learner-bad"),
                "studyin.ai.interaction_id": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
                "studyin.ai.rating": 9,
            },
        )
    return list(exporter.get_finished_spans())


async def test_a_rejected_statement_is_dead_lettered_with_the_reason_and_the_others_flow(
    migrated: Settings, fresh_ralph: RalphServer
) -> None:
    settings = lrs_settings(migrated, fresh_ralph.url + "/xAPI", fresh_ralph, lrs_batch_statements=50)
    published = publish(migrated, learning_emissions(60), spans_per_entry=4)
    bad = publish_spans(migrated, invalid_rating_spans())
    victim = MAPPER.map(published.rows[17])
    assert not isinstance(victim, Skipped)
    other = {**victim, "result": {"extensions": {"https://example.org/x": 1}}}
    assert fresh_ralph.post([other]).status_code == 200  # the LRS holds the id with another content

    async with Forwarder(settings) as forwarder:
        totals = await forwarder.drain(120)
        status = await forwarder.status()

    counts = fresh_ralph.stored_ids()
    assert set(counts) == published.statement_ids and set(counts.values()) == {1}
    assert as_sent(fresh_ralph.get(victim["id"]) or {}) == other  # the first record stands (409 policy)
    assert totals.conflicts == 1 and totals.invalid_events == 1
    assert status["dead_letter_length"] == 2 and status["lag"] == 0 and status["healthy"]
    client = redis.Redis.from_url(migrated.redis_url or "")
    try:
        letters = client.xrange(keys.dead_letter_key(migrated, stream_keys(migrated)[0]))
    finally:
        client.close()
    by_kind = {fields[b"kind"].decode(): fields for _, fields in letters}
    conflict = by_kind["conflict"]
    assert conflict[b"status"] == b"409"
    assert b"Differing statements already exist" in conflict[b"reason"]
    assert conflict[b"statement_id"].decode() == victim["id"]
    assert orjson.loads(conflict[b"statement"]) == victim
    assert conflict[b"source_id"].decode() in published.entry_ids
    invalid = by_kind["invalid_event"]
    assert invalid[b"reason"] == b"ai_coach_feedback.rating: Input should be less than or equal to 5"
    assert invalid[b"event_id"].decode() == str(bad.rows[0].event_id)
    assert b"learner-bad" not in json.dumps([str(v) for _, f in letters for v in f.values()]).encode()


async def test_entries_trimmed_before_delivery_are_caught_up_from_raw_events(
    migrated: Settings, fresh_ralph: RalphServer
) -> None:
    """O: stored and forwarded before; A: forwarded; B: stored by the aggregator, trimmed from the bus before
    the forwarder read it; C: on the bus after the trim. The LRS ends with O+A+B+C once each, and the
    catch-up started at the watermark: it did not read O again."""
    settings = lrs_settings(migrated, fresh_ralph.url + "/xAPI", fresh_ralph)
    old = publish(migrated, learning_emissions(30))
    async with Aggregator(migrated) as aggregator:
        await aggregator.drain(60)
    async with Forwarder(settings) as forwarder:
        await forwarder.drain(60)
        await asyncio.sleep(1.2)
        await forwarder.take_mark()  # a mark after O's entries were stored, before A's arrive
        a = publish(migrated, learning_emissions(20))
        await forwarder.drain(60)
    b = publish(migrated, learning_emissions(50))
    async with Aggregator(migrated) as aggregator:
        await aggregator.drain(60)
    client = redis.Redis.from_url(migrated.redis_url or "")
    try:
        (stream,) = stream_keys(migrated)
        client.xtrim(stream, maxlen=0, approximate=False)
    finally:
        client.close()
    c = publish(migrated, learning_emissions(12))

    async with Forwarder(settings) as forwarder:
        totals = await forwarder.drain(120)
        status = await forwarder.status()

    expected = old.statement_ids | a.statement_ids | b.statement_ids | c.statement_ids
    counts = fresh_ralph.stored_ids()
    assert set(counts) == expected and set(counts.values()) == {1}
    assert totals.gaps == 1
    assert len(b.rows) <= totals.catch_up_events <= len(a.rows) + len(b.rows)
    assert status["catch_up"] is None and status["lag"] == 0


async def test_status_reports_the_lrs_before_any_delivery(
    migrated: Settings, fresh_ralph: RalphServer
) -> None:
    async with Forwarder(lrs_settings(migrated, fresh_ralph.url + "/xAPI", fresh_ralph)) as forwarder:
        status = await forwarder.status()
    assert status["healthy"] is True and status["lrs"] == "ok" and status["lag"] == 0
    wrong = lrs_settings(migrated, fresh_ralph.url + "/xAPI", fresh_ralph, lrs_password="not-the-password")
    async with Forwarder(wrong) as forwarder:
        status = await forwarder.status()
    assert status["healthy"] is False and status["lrs"] == "misconfigured: GET statements answered 401"
    settings = lrs_settings(migrated, "http://127.0.0.1:9/xAPI", fresh_ralph)
    async with Forwarder(settings) as forwarder:
        status = await forwarder.status()
    assert status["healthy"] is False and status["lrs"].startswith("unavailable")
    assert status["redis"] == "ok" and status["postgres"] == "ok"


async def test_oauth_client_credentials_a_token_fetched_once_and_again_when_revoked(
    migrated: Settings, fresh_ralph: RalphServer
) -> None:
    with flaky_proxy(fresh_ralph.url) as proxy:
        proxy.oauth_client, proxy.lrs_auth = ("studyin", "client-secret-0123"), fresh_ralph.auth
        oauth = {
            "lrs_username": None,
            "lrs_password": None,
            "lrs_oauth_token_url": f"http://127.0.0.1:{proxy.port}/token",
            "lrs_oauth_client_id": "studyin",
            "lrs_oauth_client_secret": "client-secret-0123",
        }
        settings = lrs_settings(migrated, proxy.url, fresh_ralph, **oauth)
        first = publish(migrated, learning_emissions(30))
        async with Forwarder(settings) as forwarder:
            await forwarder.drain(60)
            assert proxy.tokens_issued == 1
            proxy.revoke()  # the LRS forgets the token before it expires: one new token, then on
            second = publish(migrated, learning_emissions(20))
            await forwarder.drain(60)
            assert proxy.tokens_issued == 2
        assert set(fresh_ralph.stored_ids()) == first.statement_ids | second.statement_ids

        wrong = lrs_settings(migrated, proxy.url, fresh_ralph, **{**oauth, "lrs_oauth_client_secret": "nope"})
        publish(migrated, learning_emissions(4))
        async with Forwarder(wrong) as forwarder:
            stop = asyncio.Event()
            task = asyncio.create_task(forwarder.run(stop))
            for _ in range(100):
                await asyncio.sleep(0.1)
                if forwarder.lrs_state != "unknown":
                    break
            stop.set()
            await task
            status = await forwarder.status()
        assert status["lrs"].startswith("misconfigured: OAuth token endpoint refused the client: 401")
        assert status["healthy"] is False and status["dead_letter_length"] == 0 and status["lag"] > 0


async def test_entries_trimmed_while_pending_are_caught_up(
    migrated: Settings, fresh_ralph: RalphServer
) -> None:
    """A forwarder killed after reading entries (pending, not acknowledged) and away until the bus trimmed
    them: back, it finds them empty, records a catch-up before acknowledging them, and the LRS gets them."""
    settings = lrs_settings(migrated, fresh_ralph.url + "/xAPI", fresh_ralph)
    async with Forwarder(settings):
        pass  # creates the group
    published = publish(migrated, learning_emissions(24))
    client = redis.Redis.from_url(migrated.redis_url or "")
    try:
        (stream,) = stream_keys(migrated)
        read = client.xreadgroup(
            settings.lrs_consumer_group, settings.consumer_name, {stream: ">"}, count=100
        )
        assert len(read[0][1]) == len(published.entry_ids)  # all pending on the "killed" member
        async with Aggregator(migrated) as aggregator:
            await aggregator.drain(60)
        client.xtrim(stream, maxlen=0, approximate=False)
    finally:
        client.close()

    async with Forwarder(settings) as forwarder:
        totals = await forwarder.drain(120)
        status = await forwarder.status()

    counts = fresh_ralph.stored_ids()
    assert set(counts) == published.statement_ids and set(counts.values()) == {1}
    assert totals.gaps == 1 and totals.catch_up_events >= len(published.rows)
    assert status["pending"] == 0 and status["catch_up"] is None
