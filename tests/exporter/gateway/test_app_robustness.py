"""The gateway refuses cleanly: deep nesting, gzip as RFC 1952 says, strict OTLP/JSON, the event
window through partial success, and a 413 that a ``Connection: close`` client can read."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.gateway.otlp_decode import parse_json
from tests.support.exporter import free_port, gateway_env, make_spans, stop_process, wait_listening
from tests.support.gateway import PB, bus_records, client_for, otlp_json, request_bytes

JSON = {"content-type": "application/json"}
DAY_NS = 86_400 * 1_000_000_000


def one_span_document(**changes: Any) -> dict[str, Any]:
    document = otlp_json(encode_spans(make_spans(1, prefix="strict")))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(changes)
    return document


# --- nesting ------------------------------------------------------------------------------------------


def with_deep_value(value: str) -> bytes:
    """A one-span request whose span has an attribute ``deep`` with ``value`` (JSON text: built as
    text, since nothing recursive can write a thousand levels)."""
    document = with_attribute({"stringValue": "__DEEP__"})
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"][0]["key"] = "deep"
    return json.dumps(document).replace('{"stringValue": "__DEEP__"}', value).encode()


def nested_kvlist_json(depth: int) -> bytes:
    """A request whose one attribute is a kvlist nested ``depth`` times."""
    return with_deep_value(
        '{"kvlistValue":{"values":[{"key":"k","value":' * depth + '{"stringValue":"x"}' + "}]}}" * depth
    )


def nested_kvlist_protobuf(depth: int) -> bytes:
    request = encode_spans(make_spans(1, prefix="deep"))
    value: AnyValue = request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="deep").value
    for _ in range(depth):
        value = value.kvlist_value.values.add(key="k").value
    value.string_value = "x"
    return request.SerializeToString()


async def test_deeply_nested_bodies_get_400_never_500(
    gateway: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """About a thousand levels answered 500 with a stack trace; now 400 at every depth past the
    limit (JSON text, JSON messages, protobuf messages), and nothing reaches the bus."""
    arrays = 5000
    bodies: list[tuple[str, bytes, dict[str, str], int]] = [
        ("json kvlist x1000", nested_kvlist_json(1000), JSON, 400),
        ("json kvlist x150 (under 1024 JSON levels, over 100 messages)", nested_kvlist_json(150), JSON, 400),
        ("json arrays x5000 in an unknown field", b'{"x":' + b"[" * arrays + b"]" * arrays + b"}", JSON, 400),
        ("json arrays x1000 in an attribute", nested_array_in_attribute(1000), JSON, 400),
        ("protobuf kvlist x1000", nested_kvlist_protobuf(1000), PB, 400),
        ("protobuf kvlist x60 (over 100 messages)", nested_kvlist_protobuf(60), PB, 400),
    ]
    caplog.set_level(logging.WARNING)
    for name, body, headers, expected in bodies:
        response = await gateway.post("/v1/traces", content=body, headers=headers)
        assert response.status_code == expected, (name, response.status_code, response.text[:300])
    assert bus_records(settings) == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    # Legitimate nesting still passes: a kvlist 20 deep, as JSON and as protobuf.
    for body, headers in ((nested_kvlist_json(20), JSON), (nested_kvlist_protobuf(20), PB)):
        response = await gateway.post("/v1/traces", content=body, headers=headers)
        assert response.status_code == 200, response.text
    deep = [r.attributes["deep"] for r in bus_records(settings)]
    assert len(deep) == 2 and deep[0] == deep[1]


def nested_array_in_attribute(depth: int) -> bytes:
    return with_deep_value('{"arrayValue":{"values":[' * depth + '{"intValue":"1"}' + "]}}" * depth)


# --- gzip ---------------------------------------------------------------------------------------------

GZ = {**PB, "content-encoding": "gzip"}


async def test_every_gzip_member_is_read(gateway: httpx.AsyncClient, settings: Settings) -> None:
    """Two members concatenated are one gzip body (``cat a.gz b.gz``, as gzip tools read it): both
    requests' bytes are decoded. Here each member holds a complete request, and protobuf merges
    concatenated messages: the spans of both arrive (before: only the first member's)."""
    first, second = request_bytes(3, prefix="a"), request_bytes(2, prefix="b")
    body = gzip.compress(first) + gzip.compress(second)
    assert gzip.decompress(body) == first + second  # the reference reader
    response = await gateway.post("/v1/traces", content=body, headers=GZ)
    assert response.status_code == 200
    assert [r.name for r in bus_records(settings)] == ["a-0", "a-1", "a-2", "b-0", "b-1"]


@pytest.mark.parametrize(
    ("name", "mangle"),
    [
        ("no trailer", lambda member: member[:-8]),
        ("cut inside the data", lambda member: member[: len(member) // 2]),
        ("trailing garbage", lambda member: member + b"garbage"),
        ("trailing zeros", lambda member: member + b"\x00" * 16),
        ("a lone magic byte after the member", lambda member: member + b"\x1f"),
        ("wrong CRC-32", lambda member: member[:-8] + bytes([member[-8] ^ 1]) + member[-7:]),
        ("wrong length", lambda member: member[:-4] + bytes([member[-4] ^ 1]) + member[-3:]),
        ("empty body", lambda member: b""),
        ("second member truncated", lambda member: member + member[:-3]),
    ],
)
async def test_gzip_that_is_not_exactly_a_series_of_members_is_refused(
    gateway: httpx.AsyncClient, settings: Settings, name: str, mangle: Callable[[bytes], bytes]
) -> None:
    response = await gateway.post("/v1/traces", content=mangle(gzip.compress(request_bytes(2))), headers=GZ)
    assert response.status_code == 400, (name, response.status_code)
    assert bus_records(settings) == []


async def test_the_decompressed_bound_holds_across_members(settings: Settings) -> None:
    settings = settings.with_overrides(gateway_max_body_bytes=4096)
    member = gzip.compress(b"\x0a" + b"\x00" * 3000)  # each well under the bound once inflated
    async for client in client_for(settings):
        response = await client.post("/v1/traces", content=member * 2, headers=GZ)
        assert response.status_code == 413
    assert bus_records(settings) == []


# --- strict OTLP/JSON ---------------------------------------------------------------------------------


def with_attribute(value: dict[str, Any]) -> dict[str, Any]:
    return one_span_document(attributes=[{"key": "a", "value": value}])


REFUSED = [
    ("kind as a name", one_span_document(kind="SERVER"), "kind"),
    ("kind as the protobuf enum name", one_span_document(kind="SPAN_KIND_SERVER"), "kind"),
    ("kind as a fraction", one_span_document(kind=1.5), "kind"),
    ("kind as a string number", one_span_document(kind="2"), "kind"),
    ("kind as a boolean", one_span_document(kind=True), "kind"),
    ("status code as a name", one_span_document(status={"code": "STATUS_CODE_ERROR"}), "status.code"),
    (
        "a fraction for an integer field",
        one_span_document(droppedAttributesCount=1.5),
        "droppedAttributesCount",
    ),
    ("a fraction for intValue", with_attribute({"intValue": 1.5}), "attributes[0].value.intValue"),
    ("bytesValue with spaces", with_attribute({"bytesValue": "a b c"}), "attributes[0].value.bytesValue"),
    ("bytesValue of symbols", with_attribute({"bytesValue": "!!!!"}), "attributes[0].value.bytesValue"),
    ("bytesValue with bad padding", with_attribute({"bytesValue": "YQ="}), "attributes[0].value.bytesValue"),
    ("a boolean for doubleValue", with_attribute({"doubleValue": True}), "attributes[0].value.doubleValue"),
    ("traceId not hex", one_span_document(traceId="zz" * 16), "traceId"),
    ("traceId with spaces", one_span_document(traceId="ab " * 10), "traceId"),
]


@pytest.mark.parametrize(("name", "document", "field"), REFUSED, ids=[case[0] for case in REFUSED])
async def test_lenient_json_is_refused_naming_the_field(
    gateway: httpx.AsyncClient, settings: Settings, name: str, document: dict[str, Any], field: str
) -> None:
    """OTLP/JSON: enums are integers ("the enum name strings MUST NOT be used"), bytes are base64,
    ids are hex; what protobuf's own parser would read as 0 or empty is a 400 naming the field."""
    response = await gateway.post("/v1/traces", json=document)
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert f"resourceSpans[0].scopeSpans[0].spans[0].{field}" in message, message
    assert bus_records(settings) == []


async def test_valid_json_variants_are_accepted(gateway: httpx.AsyncClient, settings: Settings) -> None:
    """What the mapping allows: integral kinds, base64 without padding or URL-safe, upper-case hex
    ids, int64 as strings or numbers, unknown fields (ignored)."""
    span = one_span_document()["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    documents = [
        one_span_document(kind=2, spanId=span["spanId"].upper(), traceId=span["traceId"].upper()),
        with_attribute({"bytesValue": "YQ"}),
        with_attribute({"bytesValue": "-_8"}),
        one_span_document(startTimeUnixNano=int(span["startTimeUnixNano"]), unknownField={"x": [1]}),
    ]
    for document in documents:
        response = await gateway.post("/v1/traces", json=document)
        assert response.status_code == 200, response.text
        assert not response.json().get("partialSuccess")
    records = bus_records(settings)
    assert records[0].kind == 1  # SERVER in the SDK's numbering
    # Decoded as the mapping says; the privacy guard then drops bytes values before the bus.
    decoded = [parse_json(json.dumps(document).encode()) for document in documents[1:3]]
    values = [request.resource_spans[0].scope_spans[0].spans[0].attributes[0].value for request in decoded]
    assert [value.bytes_value for value in values] == [b"a", b"\xfb\xff"]
    assert "a" not in records[1].attributes and "a" not in records[2].attributes


# --- the event window ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_spans_outside_the_event_window_are_rejected_through_partial_success(
    gateway: httpx.AsyncClient, settings: Settings, encoding: str
) -> None:
    request = encode_spans(make_spans(6, prefix="w"))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[1].end_time_unix_nano += 300 * DAY_NS  # the 300 days ahead
    spans[2].events[0].time_unix_nano += 2 * DAY_NS
    spans[3].end_time_unix_nano -= 100 * DAY_NS  # older than raw retention (90 days)
    spans[3].events[0].time_unix_nano -= 100 * DAY_NS
    spans[4].trace_id = b"\x00" * 16
    spans[5].end_time_unix_nano += 5 * 60 * 1_000_000_000  # 5 minutes of skew: accepted
    if encoding == "json":
        response = await gateway.post("/v1/traces", json=otlp_json(request))
        partial = response.json()["partialSuccess"]
        rejected, message = int(partial["rejectedSpans"]), partial["errorMessage"]
    else:
        response = await gateway.post("/v1/traces", content=request.SerializeToString(), headers=PB)
        parsed = ExportTraceServiceResponse.FromString(response.content).partial_success
        rejected, message = parsed.rejected_spans, parsed.error_message
    assert response.status_code == 200
    assert rejected == 4
    assert message.startswith("4 spans rejected: "), message
    assert "end time is more than 600 s ahead" in message and "an event's time is more than 600 s" in message
    assert "older than raw retention (90 days)" in message and "invalid trace_id (1)" in message
    assert sorted(r.name for r in bus_records(settings)) == ["w-0", "w-5"]


# --- 413 over Connection: close ---------------------------------------------------------------------


def raw_post(port: int, headers: dict[str, str], body: bytes, chunk: int = 65_536) -> bytes:
    """POST with a raw socket: send everything, then read the answer to the end."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: gateway\r\n{head}\r\n".encode())
        for start in range(0, len(body), chunk):
            sock.sendall(body[start : start + chunk])
        answer = b""
        while data := sock.recv(65_536):
            answer += data
    return answer


def test_a_413_reaches_clients_that_send_connection_close(settings: Settings, tmp_path: Path) -> None:
    """A real uvicorn server: the client declares and sends a body four times the bound, with
    ``Connection: close``. Answering without reading the body and closing reset the connection
    before the client read the 413; now the body is read and discarded first."""
    import subprocess
    import sys

    port = free_port()
    env = {**gateway_env(settings, port), "STUDYIN_ANALYTICS_GATEWAY_MAX_BODY_BYTES": str(256 * 1024)}
    log = open(tmp_path / "gateway.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", "gateway", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_listening(port, 30, process)
        body = b"\x0a" * (1024 * 1024)
        for attempt in range(3):  # a reset is a race the server wins most of the time: try it thrice
            answer = raw_post(
                port,
                {
                    "Content-Type": "application/x-protobuf",
                    "Content-Length": str(len(body)),
                    "Connection": "close",
                },
                body,
            )
            assert answer.startswith(b"HTTP/1.1 413"), (attempt, answer[:200])
        # The same with httpx (Content-Length, then chunked), and for a refused content type.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            close = {"connection": "close"}
            response = client.post("/v1/traces", content=body, headers={**PB, **close})
            assert response.status_code == 413
            response = client.post("/v1/traces", content=iter([body[:100_000]] * 10), headers={**PB, **close})
            assert response.status_code == 413
            response = client.post(
                "/v1/traces", content=body, headers={"content-type": "text/plain", **close}
            )
            assert response.status_code == 415
            # A client that waits for 100 Continue gets the 413 without sending its body.
        started = time.monotonic()
        answer = b""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 1048576\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            while data := sock.recv(65_536):
                answer += data
        assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 10, answer[:100]
    finally:
        stop_process(process)
    assert bus_records(settings) == []


def test_the_stock_exporter_with_gzip_and_the_strict_decoder_agree(
    settings: Settings, tmp_path: Path
) -> None:
    """Third-party bodies produced at test time: the stock OTLP/HTTP exporter, gzip on and off,
    against a real gateway. Every span arrives (the strict gzip and protobuf paths take them)."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from tests.support.exporter import start_gateway

    port = free_port()
    process = start_gateway(settings, port, tmp_path / "gateway.log")
    try:
        for compression, prefix in ((Compression.Gzip, "gz"), (Compression.NoCompression, "plain")):
            exporter = OTLPSpanExporter(
                endpoint=f"http://127.0.0.1:{port}/v1/traces", compression=compression, timeout=10
            )
            assert exporter.export(make_spans(20, prefix=prefix)) is SpanExportResult.SUCCESS
            exporter.shutdown()
    finally:
        stop_process(process)
    names = [r.name for r in bus_records(settings)]
    assert sorted(names) == sorted([f"gz-{i}" for i in range(20)] + [f"plain-{i}" for i in range(20)])
