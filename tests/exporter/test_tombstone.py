"""The tombstone of erased learners: exactly their spans are dropped, by every writer and reader."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import RedisStreamSpanExporter, tombstone, wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.settings import BusSettings
from studyin_analytics.exporter.tombstone import Tombstone, digest
from studyin_analytics.instrumentation import semconv
from tests.support.exporter import make_spans, stream_span_names
from tests.support.gateway import PB, bus_records, client_for

USERS = [f"t1:{i:032x}" for i in range(6)]


def _record(span_user: str | None, event_users: list[str | None]) -> wire.SpanRecord:
    attrs = {} if span_user is None else {semconv.USER_HASH: span_user}
    events = [
        wire.EventRecord("studyin.xp_awarded", 1, {} if u is None else {semconv.USER_LRS_HASH: u})
        for u in event_users
    ]
    return wire.SpanRecord(b"t" * 16, b"s" * 8, None, "x", 1, 0, 1, 0, attrs, events, {})


users = st.one_of(st.none(), st.sampled_from(USERS))


@pytest.mark.unit
@hsettings(max_examples=150, deadline=None)
@given(
    records=st.lists(st.tuples(users, st.lists(users, max_size=3)), max_size=12),
    erased=st.sets(st.sampled_from(USERS), max_size=3),
)
def test_keep_records_drops_exactly_the_spans_naming_an_erased_learner(
    records: list[tuple[Any, list[Any]]], erased: set[str]
) -> None:
    stone = Tombstone(BusSettings(stream_prefix="unit"))
    stone.digests = frozenset(digest(p) for p in erased)
    spans = [_record(span_user, event_users) for span_user, event_users in records]
    kept = stone.keep_records(spans)
    brute = [r for r, (su, eus) in zip(spans, records, strict=True) if not ({su, *eus} & erased)]
    assert kept == brute


@pytest.mark.unit
def test_the_set_holds_digests_not_pseudonyms_and_ignores_non_strings(offline_settings: Settings) -> None:
    stone = Tombstone(offline_settings)
    assert not stone.erased(USERS[0])  # empty: nothing is erased
    stone.digests = frozenset({digest(USERS[0])})
    assert USERS[0] not in digest(USERS[0]) and len(digest(USERS[0])) == 32
    assert stone.erased(USERS[0]) and not stone.erased(USERS[1])
    assert not stone.erased(None) and not stone.erased(7) and not stone.erased(USERS[0].encode())


async def test_refresh_reads_the_set_only_when_its_version_moved(settings: Settings) -> None:
    client = redis.asyncio.Redis.from_url(settings.redis_url or "")
    try:
        stone = Tombstone(settings, refresh_s=0.0)
        await stone.refresh(client)
        assert stone.digests == frozenset()
        assert await tombstone.add(client, settings, USERS[:2]) == 2
        assert await tombstone.add(client, settings, USERS[:2]) == 0  # idempotent
        await stone.refresh(client)
        assert stone.erased(USERS[0]) and stone.erased(USERS[1]) and not stone.erased(USERS[2])
        assert await tombstone.contains(client, settings, USERS[:2])
        assert not await tombstone.contains(client, settings, USERS[1:3])
        raw = await client.smembers(tombstone.tombstone_key(settings))
        assert not any(u.encode() in m for m in raw for u in USERS)
        slow = Tombstone(settings, refresh_s=3600)
        await slow.refresh(client)
        await tombstone.add(client, settings, [USERS[3]])
        await slow.refresh(client)  # not due yet: the copy is at most refresh_s old
        assert not slow.erased(USERS[3])
    finally:
        await client.aclose()


def test_the_app_exporter_drops_erased_learners_spans(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    asyncio.run(_add(settings, [USERS[1]]))
    exporter = RedisStreamSpanExporter(settings)  # its very first batch is checked too
    exporter.export(make_spans(4, prefix="mixed", users=USERS[:2]))
    exporter.shutdown()
    names = stream_span_names(client, stream_keys(settings)[0])
    assert names == ["mixed-0", "mixed-2"]
    client.close()


async def _add(settings: Settings, pseudonyms: list[str]) -> None:
    client = redis.asyncio.Redis.from_url(settings.redis_url or "")
    try:
        await tombstone.add(client, settings, pseudonyms)
    finally:
        await client.aclose()


async def test_the_gateway_drops_erased_learners_spans(settings: Settings) -> None:
    await _add(settings, [USERS[1]])
    async for gateway in client_for(settings):
        body = encode_spans(make_spans(4, prefix="g", users=USERS[:2])).SerializeToString()
        response: httpx.Response = await gateway.post("/v1/traces", content=body, headers=PB)
        assert response.status_code == 200
    assert sorted(r.name for r in bus_records(settings)) == ["g-0", "g-2"]
