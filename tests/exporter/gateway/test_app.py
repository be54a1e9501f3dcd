"""The OTLP/HTTP gateway against real Redis: encodings, partial success, errors, 503, privacy."""

from __future__ import annotations

import gzip

import httpx
import pytest
import redis
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import TracerProvider

from studyin_analytics.aggregator.devtools.embedded import free_port
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.exporter import Capture, make_spans
from tests.support.gateway import PB, bus_records, client_for, request_bytes

RAW_ID = "canary-gateway-user-31415"


async def test_protobuf_and_gzip_reach_the_bus(gateway: httpx.AsyncClient, settings: Settings) -> None:
    response = await gateway.post("/v1/traces", content=request_bytes(5), headers=PB)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 0
    zipped = gzip.compress(request_bytes(3, prefix="z"))
    response = await gateway.post("/v1/traces", content=zipped, headers={**PB, "content-encoding": "gzip"})
    assert response.status_code == 200
    records = bus_records(settings)
    assert [r.name for r in records] == ["g-0", "g-1", "g-2", "g-3", "g-4", "z-0", "z-1", "z-2"]
    assert records[0].events[0].name == "studyin.xp_awarded"
    assert records[0].kind == 0 and records[0].status_code == 0  # INTERNAL, UNSET as in the SDK


async def test_json_with_hex_ids(gateway: httpx.AsyncClient, settings: Settings) -> None:
    span = make_spans(1, prefix="j")[0]
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "app"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": f"{span.context.trace_id:032x}",
                                "spanId": f"{span.context.span_id:016x}",
                                "name": "j-0",
                                "kind": 2,
                                "startTimeUnixNano": str(span.start_time),
                                "endTimeUnixNano": str(span.end_time),
                                "attributes": [
                                    {"key": "http.route", "value": {"stringValue": "/x"}},
                                    {"key": "n", "value": {"intValue": "7"}},
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    response = await gateway.post("/v1/traces", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    (record,) = bus_records(settings)
    assert record.trace_id == span.context.trace_id.to_bytes(16, "big")
    assert record.kind == wire.SPAN_KIND_SERVER
    assert record.attributes == {"http.route": "/x", "n": 7}
    assert record.resource == {"service.name": "app"}


async def test_partial_success_rejects_bad_ids(gateway: httpx.AsyncClient, settings: Settings) -> None:
    request = encode_spans(make_spans(4))
    request.resource_spans[0].scope_spans[0].spans[1].trace_id = b"\x00" * 16
    request.resource_spans[0].scope_spans[0].spans[2].span_id = b"short"
    response = await gateway.post("/v1/traces", content=request.SerializeToString(), headers=PB)
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 2
    assert "rejected" in parsed.partial_success.error_message
    assert [r.name for r in bus_records(settings)] == ["span-0", "span-3"]


async def test_errors_400_413_415(gateway: httpx.AsyncClient, settings: Settings) -> None:
    assert (await gateway.post("/v1/traces", content=b"\xff\xff\xff garbage", headers=PB)).status_code == 400
    assert (
        await gateway.post("/v1/traces", content=b"{not json", headers={"content-type": "application/json"})
    ).status_code == 400
    bad_gzip = {**PB, "content-encoding": "gzip"}
    assert (await gateway.post("/v1/traces", content=b"not gzip", headers=bad_gzip)).status_code == 400
    assert (
        await gateway.post("/v1/traces", content=b"x", headers={"content-type": "text/plain"})
    ).status_code == 415
    brotli = {**PB, "content-encoding": "br"}
    assert (await gateway.post("/v1/traces", content=b"x", headers=brotli)).status_code == 415
    assert (await gateway.get("/v1/traces")).status_code == 405
    assert bus_records(settings) == []


async def test_oversized_bodies_get_413(settings: Settings) -> None:
    settings = settings.with_overrides(gateway_max_body_bytes=4096)
    async for client in client_for(settings):
        big = request_bytes(60)
        assert len(big) > 4096
        assert (await client.post("/v1/traces", content=big, headers=PB)).status_code == 413
        bomb = gzip.compress(b"\x0a" + b"\x00" * 100_000)  # tiny compressed, huge inflated
        assert len(bomb) < 4096
        response = await client.post("/v1/traces", content=bomb, headers={**PB, "content-encoding": "gzip"})
        assert response.status_code == 413
    assert bus_records(settings) == []


async def test_503_with_retry_after_while_redis_is_unreachable(settings: Settings) -> None:
    down = settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async for client in client_for(down):
        response = await client.post("/v1/traces", content=request_bytes(2), headers=PB)
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(settings.gateway_retry_after_s)
        response = await client.post("/v1/traces", json={"resourceSpans": []})
        assert response.status_code == 200  # nothing to write needs no Redis


async def test_privacy_guard_applies_before_redis(gateway: httpx.AsyncClient, settings: Settings) -> None:
    capture = Capture()
    provider = TracerProvider()
    provider.add_span_processor(capture)
    attributes = {
        "user.id": RAW_ID,
        "user.email": "a@b.example",
        "url.query": "q=secret",
        "http.url": "/p?x=1",
    }
    with provider.get_tracer("t").start_as_current_span("guarded", attributes=attributes):
        pass
    body = encode_spans(capture.spans).SerializeToString()
    assert (await gateway.post("/v1/traces", content=body, headers=PB)).status_code == 200
    (record,) = bus_records(settings)
    expected = Pseudonymizer.from_settings(settings).pseudonymize(RAW_ID)
    assert record.attributes == {"user.hash": expected, "http.url": "/p"}
    dump = redis.Redis.from_url(settings.redis_url or "").xrange(stream_keys(settings)[0])
    assert RAW_ID.encode() not in dump[0][1][b"d"]


async def test_writes_counters_in_the_same_round_trip(gateway: httpx.AsyncClient, settings: Settings) -> None:
    await gateway.post("/v1/traces", content=request_bytes(7), headers=PB)
    client = redis.Redis.from_url(settings.redis_url or "")
    (key,) = client.keys(f"{settings.stream_prefix}:stats:gateway:*")
    counters = client.hgetall(key)
    assert counters[b"spans_exported"] == b"7"
    assert counters[b"requests"] == b"1"


def test_gateway_requires_a_pseudonym_key(settings: Settings) -> None:
    from studyin_analytics.instrumentation.settings import ConfigurationError

    with pytest.raises(ConfigurationError):
        create_gateway(settings.with_overrides(pseudonym_keys={}))
