"""Builders of the gateway tests: an in-process gateway client, OTLP request bodies, what reached the bus."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import redis
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.gateway.app import create_gateway
from tests.support.exporter import make_spans

PB = {"content-type": "application/x-protobuf"}


def request_bytes(n: int, prefix: str = "g") -> bytes:
    return encode_spans(make_spans(n, prefix=prefix)).SerializeToString()


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_gateway(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def bus_records(settings: Settings) -> list[wire.SpanRecord]:
    client = redis.Redis.from_url(settings.redis_url or "")
    records: list[wire.SpanRecord] = []
    for key in stream_keys(settings):
        for _, fields in client.xrange(key):
            records.extend(wire.decode_entry(fields))
    return records


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """``request`` as OTLP/JSON: protobuf's JSON mapping with enums as integers and hex ids, as
    the OTLP specification's deviations say (``json_format`` from opentelemetry-proto's protobuf)."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _hex(span[key])
    return document


def _hex(b64: str) -> str:
    import base64

    return base64.b64decode(b64).hex()


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` with its lifespan entered, and a client on it."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        yield client
