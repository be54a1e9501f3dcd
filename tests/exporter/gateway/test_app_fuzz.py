"""Fuzzing the gateway's decoders (hypothesis) against real Redis: whatever the body (protobuf
bytes, OTLP/JSON documents with arbitrary leaves, arbitrary JSON, arbitrary bytes), the content
type and the gzip wrapping, the answer is never a 5xx, no error is logged, and the bus gets
exactly the request's accepted spans (all of them on 200, none otherwise).

Bounded for CI: a few hundred examples, a few seconds (``FUZZ_EXAMPLES``). For a longer run:
``STUDYIN_FUZZ_EXAMPLES=20000 pytest tests/exporter/gateway/test_app_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.gateway.app import create_gateway
from tests.support.gateway import otlp_json

FUZZ_EXAMPLES = int(os.environ.get("STUDYIN_FUZZ_EXAMPLES", "250"))
NOW_NS = time.time_ns()
DAY_NS = 86_400 * 1_000_000_000

# --- OTLP requests ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.builds(lambda v: AnyValue(string_value=v), st.text(max_size=20)),
    st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats()),
    st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=12)),
    st.just(AnyValue()),
)


def _array(values: list[AnyValue]) -> AnyValue:
    value = AnyValue()
    value.array_value.values.extend(values)
    return value


def _kvlist(pairs: list[tuple[str, AnyValue]]) -> AnyValue:
    value = AnyValue()
    value.kvlist_value.values.extend(KeyValue(key=k, value=v) for k, v in pairs)
    return value


any_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.builds(_array, st.lists(inner, max_size=3)),
        st.builds(_kvlist, st.lists(st.tuples(st.text(max_size=8), inner), max_size=3)),
    ),
    max_leaves=4,
)
keys = st.one_of(
    st.sampled_from(["user.id", "user.hash", "http.route", "studyin.xp.amount", "studyin.material.id"]),
    st.text(max_size=12),
)
attributes = st.lists(st.builds(KeyValue, key=keys, value=any_values), max_size=2)
times = st.one_of(
    st.integers(NOW_NS - 2 * DAY_NS, NOW_NS + 60 * 1_000_000_000),  # recent: accepted
    st.integers(0, 2**64 - 1),  # anything a fixed64 holds
)
ids = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))
span_ids = st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))


@st.composite
def spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(ids),
        span_id=draw(span_ids),
        parent_span_id=draw(st.one_of(st.just(b""), span_ids)),
        name=draw(st.one_of(st.just("studyin.event"), st.text(max_size=12))),
        kind=draw(st.integers(0, 6)),
        start_time_unix_nano=draw(times),
        end_time_unix_nano=draw(times),
    )
    span.attributes.extend(draw(attributes))
    for _ in range(draw(st.integers(0, 1))):
        event = span.events.add(
            name=draw(
                st.one_of(
                    st.sampled_from(["studyin.xp_awarded", "studyin.session_end"]), st.text(max_size=10)
                )
            ),
            time_unix_nano=draw(times),
        )
        event.attributes.extend(draw(attributes))
    span.status.code = draw(st.integers(0, 3))
    return span


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(draw(attributes))
        for _ in range(draw(st.integers(0, 2))):
            resource_spans.scope_spans.add().spans.extend(draw(st.lists(spans(), max_size=2)))
    return request


# --- bodies ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
SPAN_KEYS = ["traceId", "spanId", "parentSpanId", "name", "kind", "startTimeUnixNano", "endTimeUnixNano"]
SPAN_KEYS += ["attributes", "events", "status", "droppedAttributesCount", "flags", "links", "trace_id"]
VALUE_KEYS = [
    "stringValue",
    "boolValue",
    "intValue",
    "doubleValue",
    "bytesValue",
    "arrayValue",
    "kvlistValue",
]


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    """A valid OTLP/JSON request with one leaf or field replaced by an arbitrary JSON value."""
    document = otlp_json(draw(requests()))
    spans_ = [
        span
        for resource_spans in document.get("resourceSpans", [])
        for scope_spans in resource_spans.get("scopeSpans", [])
        for span in scope_spans.get("spans", [])
    ]
    if spans_:
        span = draw(st.sampled_from(spans_))
        if draw(st.booleans()):
            span[draw(st.sampled_from(SPAN_KEYS))] = draw(json_values)
        else:
            value = {draw(st.sampled_from(VALUE_KEYS)): draw(json_values)}
            span.setdefault("attributes", []).append({"key": "fuzz", "value": value})
    return json.dumps(document).encode()


def mutate_bytes(data: bytes, position: int, junk: bytes, cut: bool) -> bytes:
    position = position % (len(data) + 1)
    return data[:position] if cut else data[:position] + junk + data[position:]


@dataclass
class Case:
    body: bytes
    content_type: str
    encoding: str | None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["protobuf", "json", "mutated-json", "arbitrary-json", "bytes", "mangled"]))
    content_type = "application/x-protobuf"
    if kind == "protobuf":
        body = draw(requests()).SerializeToString()
    elif kind == "json":
        body, content_type = json.dumps(otlp_json(draw(requests()))).encode(), "application/json"
    elif kind == "mutated-json":
        body, content_type = draw(mutated_json()), "application/json"
    elif kind == "arbitrary-json":
        body, content_type = json.dumps(draw(json_values)).encode(), "application/json"
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
        content_type = draw(st.sampled_from(["application/x-protobuf", "application/json"]))
    else:
        source = draw(requests())
        content_type = draw(st.sampled_from(["application/x-protobuf", "application/json"]))
        plain = (
            source.SerializeToString()
            if content_type.endswith("protobuf")
            else json.dumps(otlp_json(source)).encode()
        )
        body = mutate_bytes(
            plain, draw(st.integers(0, 10_000)), draw(st.binary(max_size=8)), draw(st.booleans())
        )
    if draw(st.integers(0, 9)) == 0:  # now and then a content type the gateway does not take
        content_type = draw(st.sampled_from(["text/plain", "", "application/JSON; charset=utf-8", "x/y"]))
    encoding = None
    wrap = draw(st.sampled_from(["none", "none", "gzip", "gzip-members", "gzip-mangled", "other"]))
    if wrap == "gzip":
        body, encoding = gzip.compress(body), "gzip"
    elif wrap == "gzip-members":
        split = draw(st.integers(0, len(body)))
        body, encoding = gzip.compress(body[:split]) + gzip.compress(body[split:]), "gzip"
    elif wrap == "gzip-mangled":
        member = gzip.compress(body)
        junk, cut = draw(st.binary(max_size=8)), draw(st.booleans())
        body, encoding = mutate_bytes(member, draw(st.integers(0, len(member))), junk, cut), "gzip"
    elif wrap == "other":
        encoding = draw(st.sampled_from(["deflate", "br", "GZIP", " identity "]))
    return Case(body, content_type, encoding)


# --- the oracle -------------------------------------------------------------------------------------


def spans_in(case: Case) -> int:
    """How many spans the request holds, read independently (Python's gzip reads every member)."""
    body = gzip.decompress(case.body) if (case.encoding or "").strip().lower() == "gzip" else case.body
    if case.content_type.split(";")[0].strip().lower() == "application/x-protobuf":
        return sum(
            len(ss.spans)
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans
            for ss in rs.scope_spans
        )
    document = json.loads(body)

    def field(node: dict[str, Any], camel: str, snake: str) -> list[Any]:
        return node.get(camel) or node.get(snake) or []  # OTLP/JSON names, or protobuf's

    return sum(
        len(field(ss, "spans", "spans"))
        for rs in field(document, "resourceSpans", "resource_spans")
        for ss in field(rs, "scopeSpans", "scope_spans")
    )


def rejected_of(response: httpx.Response) -> int:
    if response.headers["content-type"].startswith("application/json"):
        return int(response.json().get("partialSuccess", {}).get("rejectedSpans", 0))
    return ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans


def test_no_body_gets_a_5xx_or_a_partial_write(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    stream = stream_keys(settings)[0]
    bus = redis.Redis.from_url(settings.redis_url or "")
    app = create_gateway(settings)
    caplog.set_level(logging.WARNING)
    seen = {"last": "0-0", "accepted": 0, "refused": 0}

    def new_spans() -> int:
        entries = bus.xrange(stream, min=f"({seen['last']}")
        if entries:
            seen["last"] = entries[-1][0].decode()
        return sum(len(wire.decode_entry(fields)) for _, fields in entries)

    with asyncio.Runner() as runner:
        lifespan = app.router.lifespan_context(app)
        runner.run(lifespan.__aenter__())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")

        @given(case=cases())
        @hsettings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        def check(case: Case) -> None:
            headers = {"content-type": case.content_type}
            if case.encoding is not None:
                headers["content-encoding"] = case.encoding
            response = runner.run(client.post("/v1/traces", content=case.body, headers=headers))
            assert response.status_code < 500, (response.status_code, response.text[:300])
            written = new_spans()
            if response.status_code == 200:
                seen["accepted"] += 1
                assert written == spans_in(case) - rejected_of(response), response.content[:300]
            else:
                seen["refused"] += 1
                assert response.status_code in (400, 413, 415), response.status_code
                assert written == 0

        try:
            check()
        finally:
            runner.run(client.aclose())
            runner.run(lifespan.__aexit__(None, None, None))
            bus.close()
    assert seen["accepted"] > FUZZ_EXAMPLES // 10 and seen["refused"] > FUZZ_EXAMPLES // 10, seen
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
