"""The server span's parent from the request headers (W3C shortcut and other propagators) and the
attributes a sampler sees at start (only samplers that may read them get them then)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import baggage, context, propagate
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from studyin_analytics.instrumentation import instrument_app
from studyin_analytics.instrumentation.http_attributes import sampler_reads_attributes
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = f"00-{TRACE_ID:032x}-00f067aa0ba902b7-01"


def app_seeing_baggage(seen: list[str | None]) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        value = baggage.get_baggage("cohort", context.get_current())
        seen.append(value if isinstance(value, str) else None)
        return {"id": item_id}

    return app


async def get(app: Any, headers: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://studyin.test") as client:
        await client.get("/items/i-1", headers=headers)


@pytest.mark.parametrize("headers", [{}, {"traceparent": PARENT, "baggage": "cohort=c7"}])
async def test_w3c_parent_and_baggage(pipeline: Pipeline, headers: dict[str, str]) -> None:
    seen: list[str | None] = []
    app = instrument_app(
        app_seeing_baggage(seen), tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER
    )
    await get(app, headers)
    (span,) = pipeline.spans()
    if headers:
        assert span.context.trace_id == TRACE_ID and span.parent is not None and span.parent.is_remote
        assert seen == ["c7"]
    else:
        assert span.parent is None and seen == [None]


class _HeaderlessPropagator(TextMapPropagator):
    """Puts a fixed parent in every request's context, reading no header: never skipped."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return TraceContextTextMapPropagator().extract({"traceparent": PARENT}, context=context)

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return set()


async def test_other_propagators_are_always_asked(pipeline: Pipeline, default_propagator: None) -> None:
    propagate.set_global_textmap(CompositePropagator([_HeaderlessPropagator()]))
    app = instrument_app(
        app_seeing_baggage([]), tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER
    )
    await get(app, {})
    (span,) = pipeline.spans()
    assert span.context.trace_id == TRACE_ID


class _AttributeSampler(Sampler):
    """Samples like ALWAYS_ON and keeps the attributes it was asked with."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Sequence[Any] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.seen.append(dict(attributes or {}))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "attribute sampler"


async def test_a_sampler_that_may_read_attributes_gets_them_at_start() -> None:
    sampler = _AttributeSampler()
    provider = TracerProvider(sampler=ParentBased(sampler))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = instrument_app(app_seeing_baggage([]), tracer_provider=provider, pseudonymizer=PSEUDONYMIZER)
    await get(app, {})
    assert (
        sampler.seen
        and sampler.seen[0].get("http.method", sampler.seen[0].get("http.request.method")) == "GET"
    )
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["http.route"] == "/items/{item_id}"


def test_which_samplers_read_attributes() -> None:
    assert not sampler_reads_attributes(ALWAYS_ON)
    assert not sampler_reads_attributes(ParentBased(ALWAYS_ON))
    assert sampler_reads_attributes(ParentBased(_AttributeSampler()))
    assert sampler_reads_attributes(None)  # a proxy tracer's: unknown, so they go at start
