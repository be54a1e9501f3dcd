"""The event carriers' cost per event (issue 16), against a bare ``span.add_event`` with the same
attributes in the same run.

* ``logger.emit`` bare: what the OpenTelemetry logs API costs (the routing rule's reason: span events
  where they leave soon anyway, log records where they would wait);
* ``tracker.material_view`` with the span-event carrier (in a request span), and with the log carrier
  in a request span (a span event: the rule's check added), with no current span and in a WebSocket
  span (log records).

Span processors discard (SimpleSpanProcessor), log processors are the real batch processor with a
discarding exporter (its worker thread runs as in an app). Times are CPU time of the measuring thread
(what the app's thread pays, steady on a loaded machine where wall time counts other processes' turns).
``studyin-analytics bench --only carriers``.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from ..instrumentation import LogRecordCarrier, Pseudonymizer, StudyInTracker, semconv
from .end_to_end_apps import NoOpLogExporter
from .framework import BenchContext, Measurement, bench, median

_USER = "bench-student-0002"
_PER_SPAN = 100  # events per enclosing span (the SDK keeps 128 per span)


class _DiscardSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _per_event(call: Callable[[], object], n: int, scope: Callable[[], AbstractContextManager[Any]]) -> float:
    """CPU µs of this thread per ``call()``, made inside ``scope()`` (renewed every ``_PER_SPAN`` calls)."""
    gc.collect()
    elapsed = 0.0
    rounds = max(n // _PER_SPAN, 1)
    for _ in range(rounds):
        with scope():
            started = time.thread_time()
            for _ in range(_PER_SPAN):
                call()
            elapsed += time.thread_time() - started
    return elapsed / (rounds * _PER_SPAN) * 1e6


def _rows(ctx: BenchContext) -> list[Measurement]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_DiscardSpans()))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(NoOpLogExporter(), max_queue_size=1_000_000)
    )
    pseudonymizer = Pseudonymizer({"b1": b"bench-only-key-0123456789"}, "b1")
    spans = StudyInTracker(tracer_provider=tracer_provider, pseudonymizer=pseudonymizer)
    logs = StudyInTracker(
        tracer_provider=tracer_provider,
        pseudonymizer=pseudonymizer,
        carrier=LogRecordCarrier.create(tracer_provider, logger_provider),
    )
    tracer = tracer_provider.get_tracer("bench.carriers")
    logger = logger_provider.get_logger("bench.carriers")
    a = semconv.FIELD_ATTRIBUTES
    attributes: dict[str, Any] = {
        semconv.EVENT_VERSION: 1,
        a["material_id"]: "cardio-101",
        a["material_type"]: "video",
        a["session_id"]: str(uuid.uuid4()),
        semconv.USER_HASH: pseudonymizer.pseudonymize(_USER),
    }
    name = semconv.event_name("material_view")

    def request() -> AbstractContextManager[Any]:
        return tracer.start_as_current_span(
            "GET /bench", kind=SpanKind.SERVER, attributes={"http.request.method": "GET"}
        )

    def websocket() -> AbstractContextManager[Any]:
        return tracer.start_as_current_span(
            "WebSocket /coach", kind=SpanKind.SERVER, attributes={"url.scheme": "wss"}
        )

    def bare_add_event() -> object:
        trace.get_current_span().add_event(name, dict(attributes))
        return None

    def bare_emit() -> object:
        logger.emit(event_name=name, attributes=dict(attributes), timestamp=time.time_ns())
        return None

    def view(tracker: StudyInTracker) -> Callable[[], object]:
        return lambda: tracker.material_view(_USER, "cardio-101", "video")

    cases: list[tuple[str, Callable[[], object], Callable[[], AbstractContextManager[Any]]]] = [
        ("logger.emit, bare", bare_emit, nullcontext),
        ("tracker.material_view, span-event carrier, request span", view(spans), request),
        ("tracker.material_view, log carrier, request span (span event)", view(logs), request),
        ("tracker.material_view, log carrier, no span (log record)", view(logs), nullcontext),
        ("tracker.material_view, log carrier, WebSocket span (log record)", view(logs), websocket),
    ]
    n = ctx.scale(20_000, 1_000)
    rows: list[Measurement] = []
    for label, call, scope in cases:
        values: list[float] = []
        baselines: list[float] = []
        for _ in range(ctx.repeat_count):  # interleaved: the machine is shared and noisy
            baselines.append(_per_event(bare_add_event, n, request))
            values.append(_per_event(call, n, scope))
        rows.append(
            Measurement(
                name=label,
                value=median(values),
                unit="µs",
                baseline=median(baselines),
                baseline_name="span.add_event, same attributes",
                notes=f"CPU time of the calling thread per event, {n} events x {ctx.repeat_count}",
                samples=values,
            )
        )
    logger_provider.shutdown()
    tracer_provider.shutdown()
    return rows


@bench("carriers")
async def carriers(ctx: BenchContext) -> list[Measurement]:
    async with ctx.task("carriers: per-event cost of each carrier"):
        return await asyncio.to_thread(_rows, ctx)
