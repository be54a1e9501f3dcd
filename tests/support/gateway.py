"""Builders of the gateway tests: an in-process gateway client, OTLP request bodies, what reached the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import redis
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.instrumentation.settings import Settings
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
