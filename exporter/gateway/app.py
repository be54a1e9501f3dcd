"""The OTLP/HTTP gateway: ``POST /v1/traces`` and ``POST /v1/logs`` (:mod:`.logs`) into the Redis stream bus.

For routing through an OpenTelemetry Collector (its ``otlphttp`` exporter points here).
Follows the OTLP/HTTP specification:

* bodies are ``application/x-protobuf`` or ``application/json`` (OTLP/JSON: ids in hex, enums
  as integers), optionally ``Content-Encoding: gzip`` (every member); decoded strictly
  (:mod:`.otlp_decode`); the response uses the request's encoding;
* ``200`` with ``partial_success`` (rejected count and why) when some spans were rejected:
  invalid trace or span ids, or a time outside the event window (:mod:`.admission`: later than
  ``max_event_future_s`` ahead, or older than raw retention);
* ``400`` malformed body (naming the field), ``413`` body larger than ``gateway_max_body_bytes``
  (compressed or decompressed), ``415`` other content types or encodings, ``405`` other methods;
  a request refused before its body was read has its body read and discarded first (bounded),
  so that a client sending ``Connection: close`` reads the answer instead of a reset;
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
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...instrumentation import semconv
from ...instrumentation.custom_schemas import default_registry
from ...instrumentation.privacy import MAX_VALUE_DEPTH, PrivacyGuard, Pseudonymizer
from ...instrumentation.settings_base import require
from .. import replication, wire
from ..admission import EventWindow
from ..bus import shard_index, stream_keys
from ..connection import UNAVAILABLE_ERRORS, AsyncClient, async_client, unavailable
from ..custom_registry import follow_custom_schemas
from ..failed_events import MAX_LEN as FAILED_MAX_LEN
from ..failed_events import FailedEvent, add_commands
from ..runtime import correlation
from ..runtime.http_metrics import HTTPServerMetrics
from ..runtime.selftelemetry import METRICS_PATH
from ..tombstone import Tombstone
from ..writer_stats import STATS_TTL_S, WriterStats, stats_key
from .custom_check import screen_custom
from .logs import LOGS, LOGS_PATH, Signal
from .otlp_decode import (
    INVALID_ARGUMENT,
    UNAVAILABLE,
    RequestRefused,
    bad_request,
    gunzip,
    parse_json,
    parse_protobuf,
    too_large,
)
from .settings import GatewaySettings as Settings
from .telemetry import GatewayTelemetry

_log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACES_PATH = "/v1/traces"

DRAIN_FACTOR = 4
DRAIN_S = 10.0
"""The body of a request refused before it was read is read and discarded (so the answer reaches
a client that sent ``Connection: close``: closing with unread data resets the connection) when it
declares at most ``DRAIN_FACTOR`` times ``gateway_max_body_bytes``, for at most ``DRAIN_S``."""


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


def records_of(
    request: ExportTraceServiceRequest, window: EventWindow | None = None
) -> tuple[list[wire.SpanRecord], Counter[str]]:
    """Bus records of a request, and how many spans were rejected for which reason."""
    records: list[wire.SpanRecord] = []
    rejected: Counter[str] = Counter()
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                problem = span_problem(span, window)
                if problem is not None:
                    rejected[problem] += 1
                    continue
                records.append(
                    wire.SpanRecord(
                        span.trace_id,
                        span.span_id,
                        span.parent_span_id or None,
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
    return records, rejected


def span_problem(span: Span, window: EventWindow | None) -> str | None:
    """Why the gateway rejects ``span`` (a fixed text, never a value), or ``None``.

    Ids as OTLP requires them; the span's end time (an HTTP server span is an ``api_request``
    event then) and its events' times inside the event window.
    """
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "invalid trace_id"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "invalid span_id"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "invalid parent_span_id"
    if window is not None:
        problem = window.problem(span.end_time_unix_nano, "end time")
        if problem is not None:
            return problem
        for event in span.events:
            problem = window.problem(event.time_unix_nano, "an event's time")
            if problem is not None:
                return problem
    return None


def rejection_reasons(rejected: Counter[str]) -> str:
    """The reason, or each reason with its count of spans, most frequent first."""
    if len(rejected) == 1:
        return next(iter(rejected))
    return "; ".join(f"{reason} ({count})" for reason, count in rejected.most_common())


def parse_request(body: bytes, media: str) -> ExportTraceServiceRequest:
    request: ExportTraceServiceRequest = parse_protobuf(body) if media == PROTOBUF else parse_json(body)
    return request


def _reject_spans(response: ExportTraceServiceResponse, count: int) -> None:
    response.partial_success.rejected_spans = count


TRACES = Signal(
    lambda body, json: parse_json(body) if json else parse_protobuf(body),
    records_of,
    ExportTraceServiceResponse,
    _reject_spans,
    "spans",
)


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


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "").strip()
    return int(declared) if declared.isdigit() else None


def _unread(refusal: RequestRefused) -> RequestRefused:
    """``refusal``, marked as coming before the end of the body (the gateway drains it)."""
    refusal.unread = True
    return refusal


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
        self.tombstone = Tombstone(settings)  # erased learners' late spans are dropped (docs/privacy.md)

    def _pseudonymize(self) -> Any:
        return None if self.guard.pseudonymizer is None else self.guard.pseudonymizer.pseudonymize

    async def open(self) -> None:
        # No retries in the client: a 503 makes the collector retry (on a cluster, the next
        # request finds the promoted replica).
        self.client = async_client(self.settings, socket_timeout=5.0, socket_connect_timeout=1.0, retries=0)

    async def close(self) -> None:
        if self.client is not None:
            if self.stats.export_latency_count:  # the last write's latency came after it
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    pipe = self.client.pipeline(transaction=False)
                    self._add_counters(pipe)
                    await pipe.execute()
            await self.client.aclose()

    def _add_counters(self, pipe: Any) -> None:
        """Queue this process's counters on ``pipe`` (``HSET`` + ``EXPIRE``)."""
        mapping = self.stats.as_mapping()
        mapping.update(
            requests=str(self.requests),
            spans_rejected=str(self.spans_rejected),
            unavailable=str(self.unavailable),
        )
        key = stats_key(self.settings, "gateway")
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, STATS_TTL_S)

    async def read_body(self, request: Request) -> bytes:
        """The request body, decompressed; refused beyond ``gateway_max_body_bytes``."""
        declared = _declared_length(request)
        if declared is not None and declared > self.max_body:
            raise _unread(too_large("body", self.max_body))
        chunks = bytearray()
        more = True
        while more:
            message = await request.receive()
            if message["type"] != "http.request":  # the client went away: nobody reads the answer
                raise bad_request("the client disconnected before the body ended")
            chunks += message.get("body", b"")
            more = message.get("more_body", False)
            if len(chunks) > self.max_body:
                raise _unread(too_large("body", self.max_body)) if more else too_large("body", self.max_body)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return bytes(chunks)
        if encoding != "gzip":
            raise RequestRefused(415, INVALID_ARGUMENT, "unsupported content-encoding", quoted=encoding)
        return gunzip(bytes(chunks), self.max_body)

    async def drain(self, request: Request) -> None:
        """Read and discard the rest of a refused request's body, within bounds.

        Closing a connection with unread data makes the kernel reset it, and a client that sent
        ``Connection: close`` (the server closes after answering) then gets a reset instead of the
        answer. A client that waits for ``100 Continue`` has sent nothing: it gets the answer alone.
        """
        if request.headers.get("expect", "").strip().lower() == "100-continue":
            return
        budget = DRAIN_FACTOR * self.max_body
        declared = _declared_length(request)
        if declared is not None and declared > budget:
            return  # not worth reading: such a client may see the reset
        received = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                while received <= budget:
                    message = await request.receive()
                    if message["type"] != "http.request":
                        return
                    received += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return

    async def write(self, records: list[wire.SpanRecord], failed: Sequence[FailedEvent] = ()) -> None:
        """All records in one round trip (one XADD per shard), with this process's counters (and the failed
        custom events, custom_check.py)."""
        assert self.client is not None
        await self.tombstone.refresh(self.client)
        records = self.tombstone.keep_records(records)
        if not records:
            return
        if len(self.streams) == 1:
            groups = {0: records}
        else:
            groups = {}
            for record in records:
                groups.setdefault(shard_index(_shard_key(record), len(self.streams)), []).append(record)
        started = time.monotonic()
        min_id = f"{int(time.time() * 1000) - self.retention_ms}-0"
        keys = [self.streams[shard] for shard in sorted(groups)]
        targets: dict[str, Any] = {}
        if self.settings.redis_wait_replicas:  # durable writes: WAIT on every node written
            targets = await replication.wait_targets_async(self.client, keys)
        pipe = self.client.pipeline(transaction=False)
        for key, fields in add_commands(self.settings, failed):
            pipe.xadd(key, fields, maxlen=FAILED_MAX_LEN, approximate=True)  # type: ignore[arg-type]
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
        self._add_counters(pipe)
        replication.queue_waits(pipe, targets, self.settings)
        try:
            replies = await pipe.execute()
            if targets:  # not confirmed: NotReplicated, the 503 of an unavailable bus
                replication.confirm(self.client, keys, targets, replies[-len(targets) :], self.settings)
        except BaseException:
            stats.spans_exported -= len(records)
            stats.batches_exported -= len(groups)
            raise
        if trim:
            self._next_trim = started + 10.0
        stats.observe_latency(time.monotonic() - started)

    async def traces(self, request: Request) -> Response:
        return await self.receive(request, TRACES)

    async def logs(self, request: Request) -> Response:
        return await self.receive(request, LOGS)

    async def receive(self, request: Request, signal: Signal) -> Response:
        self.requests += 1
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        try:
            if media not in (PROTOBUF, JSON):
                raise _unread(RequestRefused(415, INVALID_ARGUMENT, "unsupported content-type", quoted=media))
            body = await self.read_body(request)
            records, rejected = signal.records(
                signal.parse(body, media == JSON), EventWindow.of(self.settings)
            )
        except RequestRefused as exc:
            if exc.unread:
                await self.drain(request)
            # The only client is a collector: a refusal means a misconfiguration or a bug there.
            _log.warning("refused OTLP request: %d %s", exc.status, exc.reason)
            return self._error(exc, PROTOBUF if media != JSON else JSON)
        records, failed, custom_reasons = screen_custom(records, default_registry(), self._pseudonymize())
        if records or failed:
            try:
                await self.write(records, failed)
            except UNAVAILABLE_ERRORS as exc:
                self.unavailable += 1
                self.stats.export_failures += 1
                # The node that failed (or did not confirm a WAIT), not only the configured URL.
                _log.warning("%s; answering 503", unavailable(exc, self.settings))
                return self._error(
                    RequestRefused(503, UNAVAILABLE, "the bus is unavailable, retry later"),
                    media,
                    headers={"retry-after": str(self.settings.gateway_retry_after_s)},
                )
        response = signal.response()
        if custom_reasons:  # not spans: the events were kept as failed events, to replay
            count = custom_reasons.total()
            response.partial_success.error_message = (
                f"{count} custom events failed: {rejection_reasons(custom_reasons)}; "
            )
        if rejected:
            count = rejected.total()
            reasons = rejection_reasons(rejected)
            _log.warning("rejected %d of %d %s: %s", count, count + len(records), signal.noun, reasons)
            self.spans_rejected += count
            signal.reject(response, count)
            response.partial_success.error_message += f"{count} {signal.noun} rejected: {reasons}"
        if media == JSON:
            return Response(json_format.MessageToJson(response, indent=None), media_type=JSON)
        return Response(response.SerializeToString(), media_type=PROTOBUF)

    @staticmethod
    def _error(exc: RequestRefused, media: str, headers: dict[str, str] | None = None) -> Response:
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
        custom_schemas = follow_custom_schemas(settings)  # custom events: the registry
        try:
            yield
        finally:
            custom_schemas.close()
            await gateway.close()
            await asyncio.to_thread(telemetry.telemetry.shutdown)

    app = Starlette(
        routes=[
            Route(TRACES_PATH, gateway.traces, methods=["POST"]),
            Route(LOGS_PATH, gateway.logs, methods=["POST"]),
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
