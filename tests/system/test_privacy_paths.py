"""Nothing planted survives, on both roads to the bus, with real Redis.

Arbitrary OTLP ``AnyValue`` trees with planted raw ids and e-mails (:mod:`tests.support.planted`)
are set on real SDK spans (span and event attributes, the resource, names), then

* exported by the real :class:`RedisStreamSpanExporter` (two shards), or
* encoded by the stock OTLP encoder (``opentelemetry-exporter-otlp-proto-common``) into an
  ``ExportTraceServiceRequest`` and posted to the gateway app as protobuf and as OTLP/JSON;

and what lands on the stream is decoded and searched: no planted id or address in any string
(names, keys, values at any depth, resources) or bytes value (UTF-8 or UTF-16), no bytes values
at all, declared attributes of their type, ``user.hash`` only as a pseudonym.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import redis
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from studyin_analytics.exporter import RedisStreamSpanExporter, wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.privacy import is_pseudonym
from studyin_analytics.instrumentation.settings import Settings
from tests.support.exporter import Capture
from tests.support.planted import Case, cases, survivors, texts, walk

EXAMPLES = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def sdk_spans(case: Case) -> list[ReadableSpan]:
    """One span of ``case`` through the real SDK (which keeps nested values since extended
    attributes: dicts, tuples and bytes as they were set)."""
    capture = Capture()
    provider = TracerProvider(resource=Resource(case.resource))
    provider.add_span_processor(capture)
    tracer = provider.get_tracer("planted")
    with (
        tracer.start_as_current_span("parent", attributes={"http.route": "/x"}),
        tracer.start_as_current_span(case.name, attributes=case.attributes) as span,
    ):
        span.add_event(case.event_name, case.event_attributes)
    provider.shutdown()
    return capture.spans


class Bus:
    """The stream keys of one test, emptied before each example and read back raw."""

    def __init__(self, settings: Settings) -> None:
        self.client = redis.Redis.from_url(settings.redis_url or "")
        self.keys = stream_keys(settings)

    def clear(self) -> None:
        self.client.delete(*self.keys)

    def entries(self) -> list[dict[bytes, bytes]]:
        return [fields for key in self.keys for _, fields in self.client.xrange(key)]


def assert_nothing_planted_left(bus: Bus, case: Case, spans: int) -> None:
    records = [record for fields in bus.entries() for record in wire.decode_entry(fields)]
    assert len(records) == spans  # the spans did arrive: the bus was not just empty
    assert survivors(texts(records), case.planted) == []
    for record in records:
        for attributes in (record.attributes, record.resource, *(e.attributes for e in record.events)):
            for item, _ in walk(attributes):
                assert not isinstance(item, bytes), "a bytes value reached the bus"
                if isinstance(item, dict):
                    for key, value in item.items():
                        if key in semconv.ATTRIBUTE_TYPES:
                            assert not isinstance(value, dict | list | tuple) or (
                                semconv.ATTRIBUTE_TYPES[key] is semconv.AttributeType.STRING_ARRAY
                            )
                        if key == semconv.USER_HASH:
                            assert is_pseudonym(value)


def test_exporter_path_nothing_planted_survives(settings: Settings) -> None:
    sharded = settings.with_overrides(stream_shards=2)
    exporter = RedisStreamSpanExporter(sharded)
    bus = Bus(sharded)

    @EXAMPLES
    @given(case=cases())
    def run(case: Case) -> None:
        bus.clear()
        spans = sdk_spans(case)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert_nothing_planted_left(bus, case, len(spans))

    try:
        run()
    finally:
        exporter.shutdown()
        bus.clear()


def _hex_ids(node: Any) -> None:
    """OTLP/JSON spells trace and span ids in hex (protobuf's JSON mapping would use base64)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    _hex_ids(document)
    return json.dumps(document).encode()


def test_gateway_path_nothing_planted_survives(
    settings: Settings, gateway_post: Callable[[bytes, str], httpx.Response]
) -> None:
    bus = Bus(settings)

    @EXAMPLES
    @given(case=cases(), encoding=st.sampled_from(["application/x-protobuf", "application/json"]))
    def run(case: Case, encoding: str) -> None:
        bus.clear()
        spans = sdk_spans(case)
        request = encode_spans(spans)
        body = request.SerializeToString() if encoding == "application/x-protobuf" else otlp_json(request)
        response = gateway_post(body, encoding)
        assert response.status_code == 200, response.text
        assert_nothing_planted_left(bus, case, len(spans))

    try:
        run()
    finally:
        bus.clear()
