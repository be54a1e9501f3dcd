"""Instrumentation: what StudyIn telemetry costs the app, per tracker event and per request.

Everything runs in-process on the SDK: a ``TracerProvider`` whose processor hands each span
to a discarding exporter on the calling thread (``SimpleSpanProcessor``: no worker thread
competing for the GIL, no "queue full" drops that would make a variant look cheaper; exporting
is measured in the exporter benchmark), and a ``MeterProvider`` aggregating in memory. No
server is needed. Times are the CPU time of the measuring thread (``time.thread_time``): the code
measured does no I/O, so on a quiet machine that is its wall time, and on a busy shared one it
leaves out the time the thread waited for a core.

* **tracker, µs per event**: ``tracker.material_view`` / ``xp_awarded`` /
  ``ai_coach_interaction`` (validation, pseudonym, span event on the current request span),
  and a whole ``with tracker.session()`` (span + start and end events) - against the bare
  OpenTelemetry calls carrying the same attributes (``span.add_event``; start/end of a span).
* **ASGI, µs per request**: the ASGI callable driven directly (minimal scope, receive and
  send; many requests; median over repeats, variants interleaved) for a bare Starlette app
  (baseline), the stock ``OpenTelemetryMiddleware`` (default, and with its send/receive spans
  excluded), StudyIn's middleware with spans (route, status, user attribution), and
  StudyIn's metrics-only mode; plus what both modes defer to the metric reader's collection
  (the SDK histogram recording), per request.

Targets: with spans, at most 45 µs of overhead per request and under 0.25x the stock
middleware's overhead (issue 25; issue 3: no more than the stock middleware); metrics-only at
most 25 µs of overhead per request (issue 3); ``tracker.session`` at most 1.5x a bare span with
two events (issue 25).

Run alone: ``studyin-analytics bench --only instrumentation [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from ..instrumentation import Pseudonymizer, StudyInASGIMiddleware, StudyInTracker, semconv
from ..instrumentation.asgi import DeferredDurations
from .framework import BenchContext, Measurement, at_most, bench, median

TARGET_METRICS_ONLY_OVERHEAD_US = 25.0
TARGET_SPANS_OVERHEAD_US = 45.0
TARGET_SPANS_OVERHEAD_RATIO = 0.25  # of the stock middleware's overhead
TARGET_SESSION_RATIO = 1.5  # of a bare span with two events
SESSION_ROW = "tracker.session (start + end)"
_EVENTS_PER_SPAN = 100  # stay under the SDK's 128 events per span
_USER = "bench-student-0001"

Scope = dict[str, Any]
ASGI = Callable[..., Awaitable[None]]


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _providers() -> tuple[TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return tracer_provider, meter_provider


def _pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer({"b1": b"bench-only-key-0123456789"}, "b1")


# --- tracker ---------------------------------------------------------------------------------


def _time_per_call(call: Callable[[], object], n: int, tracer_provider: TracerProvider) -> float:
    """µs per ``call()``, made while a request span is current (rotated every 100 calls)."""
    tracer = tracer_provider.get_tracer("bench.request")
    spans = max(n // _EVENTS_PER_SPAN, 1)
    gc.collect()
    elapsed = 0.0
    for _ in range(spans):
        with tracer.start_as_current_span("GET /bench"):
            started = time.thread_time()
            for _ in range(_EVENTS_PER_SPAN):
                call()
            elapsed += time.thread_time() - started
    return elapsed / (spans * _EVENTS_PER_SPAN) * 1e6


def _raw_attributes(session_id: str, user_hash: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attributes the tracker writes for a material view and an AI coach interaction (the raw
    baselines add the same)."""
    a = semconv.FIELD_ATTRIBUTES
    view_attributes: dict[str, Any] = {
        semconv.EVENT_VERSION: 1,
        a["material_id"]: "cardio-101",
        a["material_type"]: "video",
        a["session_id"]: session_id,
        semconv.USER_HASH: user_hash,
    }
    ai_attributes: dict[str, Any] = {
        semconv.EVENT_VERSION: 1,
        a["interaction_id"]: session_id,
        a["latency_ms"]: 812.0,
        a["tokens_in"]: 120,
        a["tokens_out"]: 340,
        a["model"]: "gpt-4o-mini",
        a["topic_category"]: "cardiology",
        semconv.USER_HASH: user_hash,
    }
    return view_attributes, ai_attributes


def _case_rows(
    ctx: BenchContext,
    cases: list[tuple[str, Callable[[], object], str, Callable[[], object]]],
    n: int,
    tracer_provider: Any,
) -> list[Measurement]:
    """A row per case: its call against its baseline call, interleaved per repeat."""
    rows: list[Measurement] = []
    for name, call, baseline_name, baseline_call in cases:
        values: list[float] = []
        baselines: list[float] = []
        for _ in range(ctx.repeat_count):
            baselines.append(_time_per_call(baseline_call, n, tracer_provider))
            values.append(_time_per_call(call, n, tracer_provider))
        target: str | None = None
        met: bool | None = None
        if name == SESSION_ROW:
            target = f"<= {TARGET_SESSION_RATIO:g}x {baseline_name}"
            met = median(values) <= TARGET_SESSION_RATIO * median(baselines)
        rows.append(
            Measurement(
                name=name,
                value=median(values),
                unit="µs",
                baseline=median(baselines),
                baseline_name=baseline_name,
                target=target,
                met=met,
                notes=f"per event, {n} events x {ctx.repeat_count}, on a current request span",
                samples=values,
            )
        )
    return rows


def _tracker_rows(ctx: BenchContext) -> list[Measurement]:
    tracer_provider, _ = _providers()
    tracker = StudyInTracker(tracer_provider=tracer_provider, pseudonymizer=_pseudonymizer())
    tracer = tracer_provider.get_tracer("bench.raw")
    n = ctx.scale(20_000, 2_000)
    session_id = str(uuid.uuid4())
    user_hash = tracker.user_hash(_USER) or ""
    a = semconv.FIELD_ATTRIBUTES
    view_attributes, ai_attributes = _raw_attributes(session_id, user_hash)

    def raw_event(attributes: dict[str, Any]) -> Callable[[], object]:
        name = semconv.event_name("material_view")

        def call() -> object:
            from opentelemetry import trace

            trace.get_current_span().add_event(name, dict(attributes))
            return None

        return call

    def raw_session() -> object:
        span = tracer.start_span(semconv.LEARNING_SESSION_SPAN, attributes={a["session_id"]: session_id})
        span.add_event("studyin.session_start", dict(view_attributes))
        span.add_event("studyin.session_end", dict(view_attributes))
        span.end()
        return None

    def tracked_session() -> object:
        with tracker.session(_USER):
            pass
        return None

    cases: list[tuple[str, Callable[[], object], str, Callable[[], object]]] = [
        (
            "tracker.material_view",
            lambda: tracker.material_view(_USER, "cardio-101", "video"),
            "span.add_event, same attributes",
            raw_event(view_attributes),
        ),
        (
            "tracker.xp_awarded",
            lambda: tracker.xp_awarded(_USER, 10, "material_complete"),
            "span.add_event, same attributes",
            raw_event(view_attributes),
        ),
        (
            "tracker.ai_coach_interaction",
            lambda: tracker.ai_coach_interaction(
                _USER,
                latency_ms=812.0,
                tokens_in=120,
                tokens_out=340,
                model="gpt-4o-mini",
                topic_category="cardiology",
            ),
            "span.add_event, same attributes",
            raw_event(ai_attributes),
        ),
        (
            SESSION_ROW,
            tracked_session,
            "bare span with two events",
            raw_session,
        ),
    ]
    rows = _case_rows(ctx, cases, n, tracer_provider)
    tracer_provider.shutdown()
    return rows


# --- ASGI ------------------------------------------------------------------------------------


def _starlette_app() -> ASGI:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def material(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["material_id"])

    return Starlette(routes=[Route("/materials/{material_id}", material)])


_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/materials/cardio-101",
    "raw_path": b"/materials/cardio-101",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"studyin.test"), (b"user-agent", b"bench")],
    "client": ("127.0.0.1", 40000),
    "server": ("127.0.0.1", 8000),
}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


async def _drive(app: ASGI, n: int) -> float:
    """µs per request of ``app`` over ``n`` requests (fresh scope each, as a server would)."""
    gc.collect()
    scope = _SCOPE
    started = time.thread_time()
    for _ in range(n):
        request_scope = dict(scope)
        request_scope["state"] = {"user_id": _USER}
        await app(request_scope, _receive, _send)
    return (time.thread_time() - started) / n * 1e6


def _asgi_variants(tracer_provider: Any, meter_provider: Any) -> dict[str, ASGI]:
    """The same Starlette app bare, under the stock middleware (with and without send/receive spans)
    and under ours (spans, metrics only)."""
    pseudonymizer = _pseudonymizer()
    return {
        "bare": _starlette_app(),
        "stock": OpenTelemetryMiddleware(
            _starlette_app(), tracer_provider=tracer_provider, meter_provider=meter_provider
        ),
        "stock_excluded": OpenTelemetryMiddleware(
            _starlette_app(),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            exclude_spans=["receive", "send"],
        ),
        "ours": StudyInASGIMiddleware(
            _starlette_app(),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            pseudonymizer=pseudonymizer,
            excluded_urls="",
        ),
        "metrics_only": StudyInASGIMiddleware(
            _starlette_app(),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            pseudonymizer=pseudonymizer,
            excluded_urls="",
            metrics_only=True,
        ),
    }


async def _asgi_samples(
    ctx: BenchContext, variants: dict[str, ASGI], n: int
) -> tuple[dict[str, list[float]], list[float]]:
    """Per-request µs of each variant per repeat, and the metrics-only variant's collection cost."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    deferred = DeferredDurations.for_meter(variants["metrics_only"].meter)  # type: ignore[attr-defined]
    collection: list[float] = []
    async with ctx.task("instrumentation: ASGI per-request cost", total=ctx.repeat_count) as task:
        for app in variants.values():  # warm up (imports, caches, first-request paths)
            await _drive(app, 100)
        deferred.flush()
        for _ in range(ctx.repeat_count):
            for name, app in variants.items():  # interleaved: drift hits every variant alike
                samples[name].append(await _drive(app, n))
                if name == "metrics_only":  # what the collection then does (this and the spans variant's)
                    started = time.thread_time()
                    recorded = deferred.flush()
                    collection.append((time.thread_time() - started) / max(recorded, 1) * 1e6)
                await asyncio.sleep(0)
            ctx.advance(task)
    return samples, collection


async def _asgi_rows(ctx: BenchContext) -> list[Measurement]:
    tracer_provider, meter_provider = _providers()
    variants = _asgi_variants(tracer_provider, meter_provider)
    n = ctx.scale(5_000, 300)
    samples, collection = await _asgi_samples(ctx, variants, n)
    tracer_provider.shutdown()

    m = {name: median(values) for name, values in samples.items()}
    # Overhead = median of the variant minus median of the bare app (pairing per repeat was
    # noisier: one repeat of the bare app can land on a busy moment of this shared machine).
    overhead = {name: m[name] - m["bare"] for name in samples}
    note = (
        f"{n} requests x {ctx.repeat_count} repeats, in-process ASGI, Starlette route with a path parameter"
    )
    spans_target, spans_met = at_most(m["ours"], m["stock"], "µs (stock middleware)")
    metrics_target, metrics_met = at_most(overhead["metrics_only"], TARGET_METRICS_ONLY_OVERHEAD_US, "µs")
    spans_overhead_target = (
        f"<= {TARGET_SPANS_OVERHEAD_US:g} µs and < {TARGET_SPANS_OVERHEAD_RATIO:g}x stock middleware overhead"
    )
    spans_overhead_met = (
        overhead["ours"] <= TARGET_SPANS_OVERHEAD_US
        and overhead["ours"] < TARGET_SPANS_OVERHEAD_RATIO * overhead["stock"]
    )
    return [
        Measurement("ASGI bare Starlette app", m["bare"], "µs", notes=note, samples=samples["bare"]),
        Measurement(
            "ASGI stock OpenTelemetryMiddleware",
            m["stock"],
            "µs",
            baseline=m["bare"],
            baseline_name="bare app",
            notes="3 spans per request (server, send x2)",
            samples=samples["stock"],
        ),
        Measurement(
            "ASGI stock middleware, send/receive spans excluded",
            m["stock_excluded"],
            "µs",
            baseline=m["bare"],
            baseline_name="bare app",
            samples=samples["stock_excluded"],
        ),
        Measurement(
            "ASGI StudyIn middleware, spans",
            m["ours"],
            "µs",
            baseline=m["stock"],
            baseline_name="stock OpenTelemetryMiddleware",
            target=spans_target,
            met=spans_met,
            notes=f"route on span and histogram, user.hash; vs send/receive-excluded stock: "
            f"{m['ours'] / m['stock_excluded']:.2f}x",
            samples=samples["ours"],
        ),
        Measurement(
            "ASGI StudyIn metrics-only",
            m["metrics_only"],
            "µs",
            baseline=m["bare"],
            baseline_name="bare app",
            samples=samples["metrics_only"],
        ),
        *_asgi_tail_rows(
            m,
            overhead,
            collection,
            (metrics_target, metrics_met),
            (spans_overhead_target, spans_overhead_met),
        ),
    ]


def _asgi_tail_rows(
    m: dict[str, float],
    overhead: dict[str, float],
    collection: list[float],
    metrics: tuple[str | None, bool | None],
    spans: tuple[str, bool],
) -> list[Measurement]:
    """The rows that are not a variant's own per-request cost: the deferred histogram recording and the
    overheads over the bare app."""
    metrics_target, metrics_met = metrics
    return [
        Measurement(
            "ASGI histogram recording at collection (spans and metrics-only)",
            median(collection),
            "µs",
            baseline=m["bare"],
            baseline_name="bare app request",
            notes="per request, in the metric reader's thread (deferred SDK Histogram.record; "
            "with an exemplar for requests with spans)",
            samples=collection,
            headline=False,
        ),
        Measurement(
            "ASGI overhead: StudyIn with spans",
            overhead["ours"],
            "µs",
            baseline=overhead["stock"],
            baseline_name="stock middleware overhead",
            target=spans[0],
            met=spans[1],
            notes="per request: median minus the bare app's median; the histogram recording itself "
            "runs at collection (row above)",
        ),
        Measurement(
            "ASGI overhead: StudyIn metrics-only",
            overhead["metrics_only"],
            "µs",
            baseline=overhead["stock"],
            baseline_name="stock middleware overhead",
            target=metrics_target,
            met=metrics_met,
            notes="per request: median minus the bare app's median; the histogram recording "
            "itself runs at collection (row above)",
        ),
    ]


@bench("instrumentation")
async def instrumentation(ctx: BenchContext) -> list[Measurement]:
    async with ctx.task("instrumentation: tracker per-event cost"):
        rows = await asyncio.to_thread(_tracker_rows, ctx)
    rows += await _asgi_rows(ctx)
    return rows
