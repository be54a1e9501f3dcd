"""The OTLP/HTTP gateway: ``POST /v1/traces`` into the Redis stream bus.

For routing through an OpenTelemetry Collector (its ``otlphttp`` exporter points here).
Follows the OTLP/HTTP specification:

* bodies are ``application/x-protobuf`` or ``application/json`` (ids in hex, as OTLP/JSON
  says), optionally ``Content-Encoding: gzip``; the response uses the request's encoding;
* ``200`` with ``partial_success`` when some spans were rejected (invalid trace or span ids);
* ``400`` malformed body, ``413`` body larger than ``gateway_max_body_bytes`` (compressed
  or decompressed), ``415`` other content types or encodings, ``405`` other methods;
* ``503`` with ``Retry-After`` while Redis is unreachable, so a collector retries rather
  than drops (OTLP: 503 is retryable).

Every span goes through the same :class:`~studyin_analytics.instrumentation.privacy.PrivacyGuard`
as the in-process path, with the pseudonymizer from settings (a raw ``user.id`` becomes
``user.hash``), before anything reaches Redis, and is written in the bus wire format
(:func:`.wire.encode_records`), one ``XADD`` per shard in one round trip, plus this
process's counters (``{prefix}:stats:gateway:<host>:<pid>``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..instrumentation import semconv
from ..instrumentation.privacy import MAX_VALUE_DEPTH, PrivacyGuard, Pseudonymizer
from ..instrumentation.settings import Settings, redact_url, require
from . import correlation, wire
from .bus import shard_index, stream_keys
from .connection import UNAVAILABLE_ERRORS, AsyncClient, async_client
from .selftelemetry import METRICS_PATH, GatewayTelemetry, HTTPServerMetrics
from .stats import STATS_TTL_S, WriterStats, stats_key

_log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACES_PATH = "/v1/traces"

# google.rpc.Code values used in error bodies.
_INVALID_ARGUMENT = 3
_RESOURCE_EXHAUSTED = 8
_UNAVAILABLE = 14


class _Reject(Exception):
    """A refused request. ``reason`` names the problem and is logged; it never holds request
    data: what the client sent (``quoted``) is echoed in the response only."""

    def __init__(self, status: int, code: int, reason: str, *, quoted: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.message = reason if quoted is None else f"{reason} {quoted!r}"


# --- OTLP -> bus records ----------------------------------------------------------------------


def any_value(value: AnyValue, depth: int = 1) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value: ``None`` when empty, bytes as bytes, arrays
    as lists, kvlists as dicts. Deeper than the privacy guard keeps, values are not converted
    (``None``): the guard would drop them anyway (``privacy.MAX_VALUE_DEPTH``)."""
    which = value.WhichOneof("value")
    if which is None or depth > MAX_VALUE_DEPTH:
        return None
    if which == "array_value":
        return [any_value(v, depth + 1) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes_of(value.kvlist_value.values, depth)
    return getattr(value, which)


def attributes_of(pairs: Iterable[KeyValue], depth: int = 0) -> dict[str, Any]:
    """Key-value pairs as a dict (``depth``: how deep they are nested in an attribute value).

    Not cleaned yet: :func:`.wire.encode_records` applies the privacy guard to what this returns,
    nested values included."""
    out: dict[str, Any] = {}
    for pair in pairs:
        converted = any_value(pair.value, depth + 1)
        if converted is not None:
            out[pair.key] = converted
    return out


def records_of(request: ExportTraceServiceRequest) -> tuple[list[wire.SpanRecord], int, str]:
    """Bus records of a request, the number of rejected spans and why (empty if none)."""
    records: list[wire.SpanRecord] = []
    rejected = 0
    reason = ""
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or not any(span.trace_id):
                    rejected += 1
                    reason = "invalid trace_id"
                    continue
                if len(span.span_id) != 8 or not any(span.span_id):
                    rejected += 1
                    reason = "invalid span_id"
                    continue
                parent = span.parent_span_id or None
                if parent is not None and len(parent) != 8:
                    rejected += 1
                    reason = "invalid parent_span_id"
                    continue
                records.append(
                    wire.SpanRecord(
                        span.trace_id,
                        span.span_id,
                        parent,
                        span.name,
                        max(span.kind - 1, 0),  # OTLP enum counts UNSPECIFIED first; the SDK's does not
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        span.status.code,
                        attributes_of(span.attributes),
                        [
                            wire.EventRecord(e.name, e.time_unix_nano, attributes_of(e.attributes))
                            for e in span.events
                        ],
                        resource,
                    )
                )
    return records, rejected, reason


_HEX_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP/JSON carries ids as hex; protobuf's JSON mapping expects base64 for bytes."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise _Reject(400, _INVALID_ARGUMENT, f"{key} is not hex") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError:
            raise _Reject(400, _INVALID_ARGUMENT, "body is not an ExportTraceServiceRequest") from None
        return request
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Reject(400, _INVALID_ARGUMENT, "body is not JSON") from None
    if not isinstance(document, dict):
        raise _Reject(400, _INVALID_ARGUMENT, "body is not a JSON object")
    _hex_ids_to_base64(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError):
        raise _Reject(400, _INVALID_ARGUMENT, "body is not an ExportTraceServiceRequest") from None
    return request


def _status_bytes(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` message (code = field 1, message = field 2), hand-encoded."""
    text = message.encode()
    out = bytearray(b"\x08")
    value = code
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            break
    out.append(0x12)
    length = len(text)
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes(out + text)


def _shard_key(record: wire.SpanRecord) -> Any:
    value = record.attributes.get(semconv.USER_HASH)
    if value is None:
        for event in record.events:
            value = event.attributes.get(semconv.USER_HASH)
            if value is not None:
                break
    return record.trace_id if value is None else value


# --- the app -------------------------------------------------------------------------------------


class Gateway:
    """State of one gateway process: Redis client, guard, counters."""

    def __init__(self, settings: Settings, *, guard: PrivacyGuard | None = None) -> None:
        self.settings = settings
        self.url = require(settings.redis_url, "redis_url")
        self.guard = guard or PrivacyGuard(Pseudonymizer.from_settings(settings))
        self.streams = stream_keys(settings)
        self.retention_ms = int(settings.retention_days * 86_400_000)
        self.max_body = settings.gateway_max_body_bytes
        self.stats = WriterStats()
        self.requests = 0
        self.spans_rejected = 0
        self.unavailable = 0
        self.client: AsyncClient | None = None
        self._next_trim = 0.0

    async def open(self) -> None:
        # No retries in the client: a 503 makes the collector retry (on a cluster, the next
        # request finds the promoted replica).
        self.client = async_client(self.settings, socket_timeout=5.0, socket_connect_timeout=1.0, retries=0)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _Reject(413, _RESOURCE_EXHAUSTED, f"body larger than {self.max_body} bytes")
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > self.max_body:
                raise _Reject(413, _RESOURCE_EXHAUSTED, f"body larger than {self.max_body} bytes")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return bytes(chunks)
        if encoding != "gzip":
            raise _Reject(415, _INVALID_ARGUMENT, "unsupported content-encoding", quoted=encoding)
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(bytes(chunks), self.max_body + 1)
        except zlib.error:
            raise _Reject(400, _INVALID_ARGUMENT, "body is not valid gzip") from None
        if len(body) > self.max_body or inflater.unconsumed_tail:
            raise _Reject(413, _RESOURCE_EXHAUSTED, f"decompressed body larger than {self.max_body} bytes")
        return body

    async def write(self, records: list[wire.SpanRecord]) -> None:
        """All records in one round trip (one XADD per shard), with this process's counters."""
        assert self.client is not None
        if len(self.streams) == 1:
            groups = {0: records}
        else:
            groups = {}
            for record in records:
                groups.setdefault(shard_index(_shard_key(record), len(self.streams)), []).append(record)
        started = time.monotonic()
        min_id = f"{int(time.time() * 1000) - self.retention_ms}-0"
        pipe = self.client.pipeline(transaction=False)
        for shard, group in sorted(groups.items()):
            blob = wire.encode_records(group, self.guard)
            pipe.xadd(
                self.streams[shard], wire.entry_fields(blob, len(group)), minid=min_id, approximate=True
            )
        trim = started >= self._next_trim
        if trim:
            for stream in self.streams:
                pipe.xtrim(stream, maxlen=self.settings.stream_max_len, approximate=True)
        stats = self.stats
        stats.spans_exported += len(records)
        stats.batches_exported += len(groups)
        mapping = stats.as_mapping()
        mapping.update(
            requests=str(self.requests),
            spans_rejected=str(self.spans_rejected),
            unavailable=str(self.unavailable),
        )
        key = stats_key(self.settings, "gateway")
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(key, STATS_TTL_S)
        try:
            await pipe.execute()
        except BaseException:
            stats.spans_exported -= len(records)
            stats.batches_exported -= len(groups)
            raise
        if trim:
            self._next_trim = started + 10.0
        stats.observe_latency(time.monotonic() - started)

    async def traces(self, request: Request) -> Response:
        self.requests += 1
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        try:
            if media not in (PROTOBUF, JSON):
                raise _Reject(415, _INVALID_ARGUMENT, "unsupported content-type", quoted=media)
            body = await self.read_body(request)
            records, rejected, reason = records_of(parse_request(body, media))
        except _Reject as exc:
            # The only client is a collector: a refusal means a misconfiguration or a bug there.
            _log.warning("refused OTLP request: %d %s", exc.status, exc.reason)
            return self._error(exc, PROTOBUF if media != JSON else JSON)
        if records:
            try:
                await self.write(records)
            except UNAVAILABLE_ERRORS as exc:
                self.unavailable += 1
                self.stats.export_failures += 1
                _log.warning(
                    "Redis %s unreachable: %s; answering 503", redact_url(self.url), type(exc).__name__
                )
                return self._error(
                    _Reject(503, _UNAVAILABLE, "the bus is unavailable, retry later"),
                    media,
                    headers={"retry-after": str(self.settings.gateway_retry_after_s)},
                )
        response = ExportTraceServiceResponse()
        if rejected:
            _log.warning("rejected %d of %d spans: %s", rejected, rejected + len(records), reason)
            self.spans_rejected += rejected
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = f"{rejected} spans rejected: {reason}"
        if media == JSON:
            return Response(json_format.MessageToJson(response, indent=None), media_type=JSON)
        return Response(response.SerializeToString(), media_type=PROTOBUF)

    @staticmethod
    def _error(exc: _Reject, media: str, headers: dict[str, str] | None = None) -> Response:
        if media == JSON:
            body = json.dumps({"code": exc.code, "message": exc.message}).encode()
        else:
            body = _status_bytes(exc.code, exc.message)
        return Response(body, status_code=exc.status, media_type=media, headers=headers)


def create_gateway(settings: Settings, *, guard: PrivacyGuard | None = None) -> Starlette:
    """The gateway ASGI app; ``app.state.gateway`` is its :class:`Gateway`, ``GET /metrics`` its metrics."""
    gateway = Gateway(settings, guard=guard)
    telemetry = GatewayTelemetry(gateway)

    async def health(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.open()
        try:
            yield
        finally:
            await gateway.close()
            await asyncio.to_thread(telemetry.telemetry.shutdown)

    app = Starlette(
        routes=[
            Route(TRACES_PATH, gateway.traces, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route(METRICS_PATH, telemetry.telemetry.metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(HTTPServerMetrics, **telemetry.middleware_options())],
        lifespan=lifespan,
    )
    correlation.install(app)  # request ids in log records and X-Request-ID
    app.state.gateway = gateway
    app.state.telemetry = telemetry
    return app
