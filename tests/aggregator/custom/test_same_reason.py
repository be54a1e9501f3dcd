"""The same invalid custom event is refused with the same reasons by the tracker, the track endpoint, the
OTLP gateway and the aggregator; the three server entries keep it as a failed event with those reasons."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.custom import registry
from studyin_analytics.aggregator.custom.replay import failed_entries
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.custom_schemas import describe_errors, validate_event
from studyin_analytics.instrumentation.custom_tracking import custom_attributes
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from studyin_analytics.instrumentation.tracker import EventRejected, StudyInTracker
from tests.support.api import LEARNER_A, open_api
from tests.support.custom_events import CASE, case_schema, custom_span, entry_of
from tests.support.exporter import Capture
from tests.support.gateway import PB, client_for
from tests.support.workload import push

INVALID: list[dict[str, Any]] = [
    {"case_id": "c" * 70, "score": 500, "comment": "free text"},
    {"score": "high"},
    {"case_id": "c1", "score": 5, "passed": "yes"},
]


async def failed_reasons(settings: Settings, source: str) -> list[str]:
    client = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        return [
            describe_errors(f.errors) async for _, f in failed_entries(client, settings) if f.source == source
        ]
    finally:
        await client.aclose()


def otlp_body(props: dict[str, Any]) -> bytes:
    capture = Capture()
    provider = TracerProvider()
    provider.add_span_processor(capture)
    with provider.get_tracer("tests").start_as_current_span(
        "s", attributes={semconv.USER_HASH: "t1:" + "0" * 32}
    ) as span:
        span.add_event(semconv.event_name(semconv.CUSTOM_EVENT_TYPE), custom_attributes(CASE, "1-0-0", props))
    provider.shutdown()
    return encode_spans(capture.spans).SerializeToString()


@pytest.mark.parametrize("props", INVALID, ids=["three-errors", "type-and-required", "boolean"])
async def test_the_same_invalid_event_gets_the_same_reasons_at_every_entry(
    migrated: Settings, props: dict[str, Any]
) -> None:
    settings = migrated
    conn = await connect(settings)
    try:
        await registry.register(conn, CASE, "1-0-0", case_schema(), "test")
        client = redis.Redis.from_url(settings.redis_url or "")
        await registry.publish(conn, client, settings.stream_prefix)
        client.close()
        expected = describe_errors(
            validate_event(registry.registry_of(await registry.all_versions(conn)), CASE, "1-0-0", props)
        )
    finally:
        await conn.close()
    assert expected

    tracker = StudyInTracker(
        tracer_provider=TracerProvider(), pseudonymizer=Pseudonymizer.from_settings(settings)
    )
    snapshot = _registry(settings)  # what applications follow
    tracker.use_custom_registry(lambda: snapshot)
    with pytest.raises(EventRejected) as rejected:
        tracker.custom(CASE, "1-0-0", props, user_id="u1")
    assert rejected.value.reasons == expected

    async for api in open_api(settings):
        response = await api.client.post(
            "/api/analytics/events/track",
            json={"events": [{"type": CASE, "data": {"version": "1-0-0", "properties": props}}]},
            headers=api.auth(LEARNER_A),
        )
        assert response.status_code == 202, response.text
        (result,) = response.json()["results"]
        assert result["status"] == "rejected"
        assert "; ".join(f"{_pointer(e['loc'])}: {e['msg']}" for e in result["errors"]) == expected
    assert await failed_reasons(settings, "track") == [expected]

    async for gateway in client_for(settings):
        response = await gateway.post("/v1/traces", content=otlp_body(props), headers=PB)
        assert response.status_code == 200
        assert expected in response.text
    assert await failed_reasons(settings, "gateway") == [expected]

    span = custom_span(Pseudonymizer.from_settings(settings), [(CASE, "1-0-0", props, _now_ns())])
    push(settings.redis_url or "", stream_keys(settings)[0], [entry_of([span])])
    async with Aggregator(settings) as aggregator:
        await asyncio.wait_for(aggregator.drain(timeout_s=60), timeout=90)
    assert await failed_reasons(settings, "aggregator") == [expected]


def _now_ns() -> int:
    import time

    return time.time_ns()


def _pointer(loc: list[Any]) -> str:
    parts = loc[5:] if loc[3:5] == ["data", "properties"] else []
    return "".join(f"/{p}" for p in parts) or "/"


def _registry(settings: Settings) -> Any:
    from studyin_analytics.exporter.custom_registry import SNAPSHOT_KIND
    from studyin_analytics.instrumentation.custom_schemas import decode_snapshot

    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        payload = client.hget(f"{settings.stream_prefix}:snapshot:{SNAPSHOT_KIND}", "payload")
    finally:
        client.close()
    assert isinstance(payload, bytes)
    return decode_snapshot(payload)
