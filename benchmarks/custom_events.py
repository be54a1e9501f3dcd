"""Custom events: validation cost in the tracker, and aggregator throughput with 30 % custom events.

* ``tracker.custom`` (one registry lookup + one ``jsonschema-rs`` check + the span event) against recording
  the same span event without validation, same run; target <= 1.5x;
* the aggregator draining a pre-filled stream whose events are 30 % custom (validated against the registry,
  counted in ``custom_event_daily``) against the same workload with none, same run (the aggregator bench's
  own way of measuring; the two drains of a repeat alternate which goes first); target >= 0.9x.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider

from ..aggregator.cli.settings import Settings, require
from ..aggregator.consumer.mapping import rows_from_span
from ..aggregator.consumer.service import Aggregator, tuned_gc
from ..aggregator.custom import registry
from ..aggregator.storage.db import connect
from ..exporter.bus import stream_keys
from ..exporter.wire import EventRecord, SpanRecord
from ..instrumentation import semconv
from ..instrumentation.custom_schemas import CompiledSchema, CustomRegistry
from ..instrumentation.custom_tracking import custom_attributes
from ..instrumentation.privacy import Pseudonymizer
from ..instrumentation.tracker import StudyInTracker
from .aggregator import entries_of, make_spans, users_of
from .framework import BenchContext, Measurement, at_least, at_most, bench, median

NAME = "org.example/case_completed"
VERSION = "1-0-0"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["case_id", "score"],
    "properties": {
        "case_id": {"type": "string", "maxLength": 64},
        "score": {"type": "number", "minimum": 0, "maximum": 100},
        "passed": {"type": "boolean"},
        "level": {"type": "string", "enum": ["easy", "medium", "hard"]},
        "tags": {"type": "array", "maxItems": 4, "items": {"type": "string", "pattern": "^[a-z]+$"}},
    },
}
PROPERTIES: dict[str, Any] = {
    "case_id": "case-17",
    "score": 82.5,
    "passed": True,
    "level": "hard",
    "tags": ["cardio"],
}
TARGET_VALIDATION_RATIO = 1.5
TARGET_THROUGHPUT_RATIO = 0.9
CUSTOM_SHARE = 0.3
EVENTS_PER_SPAN = 50


def _tracker_rates(calls: int, repeats: int) -> tuple[list[float], list[float]]:
    """µs per event: ``tracker.custom`` and the same span event recorded without validation."""
    compiled = CustomRegistry({(NAME, VERSION): CompiledSchema.compile(NAME, VERSION, SCHEMA)})
    provider = TracerProvider()  # no processor: the event is built and recorded, not exported
    tracker = StudyInTracker(
        tracer_provider=provider, pseudonymizer=Pseudonymizer({"k": b"bench-key-0123456789"}, "k")
    )
    tracker.use_custom_registry(lambda: compiled)
    tracer = provider.get_tracer("bench")
    event_name = semconv.event_name(semconv.CUSTOM_EVENT_TYPE)

    def unvalidated() -> None:  # what tracker.custom does, minus the validation
        attributes = custom_attributes(NAME, VERSION, PROPERTIES)
        attributes[semconv.USER_HASH] = tracker.user_hash(7)
        tracker.carrier.record(event_name, attributes, None, lifecycle=False)

    def validated() -> None:
        tracker.custom(NAME, VERSION, PROPERTIES, user_id=7)

    def per_event_us(fn: Callable[[], None]) -> float:
        started = time.perf_counter()
        for _ in range(calls // EVENTS_PER_SPAN):
            with tracer.start_as_current_span("request"):  # on the current span, as in a request
                for _ in range(EVENTS_PER_SPAN):
                    fn()
        return (time.perf_counter() - started) / (calls // EVENTS_PER_SPAN * EVENTS_PER_SPAN) * 1e6

    validated_us: list[float] = []
    plain_us: list[float] = []
    for _ in range(repeats):  # interleaved, so drift in the machine's load hits both alike
        validated_us.append(per_event_us(validated))
        plain_us.append(per_event_us(unvalidated))
    return validated_us, plain_us


def with_custom(spans: Sequence[SpanRecord], rng: random.Random, share: float) -> list[SpanRecord]:
    """``spans`` with about ``share`` of their span events replaced by valid custom events."""
    out = []
    for span in spans:
        events = [
            EventRecord(
                semconv.event_name(semconv.CUSTOM_EVENT_TYPE),
                e.time_unix_nano,
                {
                    **custom_attributes(
                        NAME, VERSION, {"case_id": f"c{rng.randrange(99)}", "score": rng.randrange(101)}
                    ),
                    semconv.USER_HASH: e.attributes.get(
                        semconv.USER_HASH, span.attributes.get(semconv.USER_HASH)
                    ),
                },
            )
            if rng.random() < share and e.name != semconv.event_name("session_end")
            else e
            for e in span.events
        ]
        out.append(span._replace(events=events))
    return out


async def _drain_rate(settings: Settings, entries: Sequence[dict[Any, Any]], events: int) -> float:
    client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
    stream = stream_keys(settings)[0]
    try:
        for i in range(0, len(entries), 200):
            async with client.pipeline(transaction=False) as pipe:
                for fields in entries[i : i + 200]:
                    pipe.xadd(stream, fields)
                await pipe.execute()
    finally:
        await client.aclose()
    async with Aggregator(settings) as aggregator:
        with tuned_gc():
            started = time.perf_counter()
            totals = await aggregator.drain(timeout_s=600)
            elapsed = time.perf_counter() - started
    if totals.events_inserted != events:
        raise RuntimeError(f"inserted {totals.events_inserted} of {events} events")
    return events / elapsed


async def _throughput(ctx: BenchContext) -> tuple[list[float], list[float], int, int]:
    events = ctx.scale(200_000, 8_000)
    rng = random.Random(20261203)
    users = users_of(ctx.settings, ctx.scale(2_000, 300))
    spans = make_spans(rng, users, events)
    custom_spans = with_custom(spans, rng, CUSTOM_SHARE)
    plain_entries, custom_entries = entries_of(spans), entries_of(custom_spans)
    count = sum(len(rows_from_span(s)) for s in spans)
    customs = sum(1 for s in custom_spans for r in rows_from_span(s) if "/" in r.event_type)
    plain: list[float] = []
    custom: list[float] = []
    async with ctx.task("custom events: aggregator throughput, 30% custom", total=ctx.repeat_count) as task:
        for repeat in range(ctx.repeat_count):
            # Alternately first and second: whatever the first drain leaves the database doing (writing
            # its pages out, vacuuming its tables) slows the second, and must not always slow the same one.
            for with_customs in (False, True) if repeat % 2 == 0 else (True, False):
                if with_customs:
                    custom.append(await _custom_rate(ctx, custom_entries, count))
                else:
                    settings = await ctx.migrated_settings("custom plain")
                    plain.append(await _drain_rate(settings, plain_entries, count))
            ctx.advance(task)
    return custom, plain, count, customs


async def _custom_rate(ctx: BenchContext, entries: Sequence[dict[Any, Any]], count: int) -> float:
    settings = await ctx.migrated_settings("custom share")
    conn = await connect(settings)
    try:
        await registry.register(conn, NAME, VERSION, SCHEMA, "bench")
    finally:
        await conn.close()
    return await _drain_rate(settings, entries, count)


@bench("custom_events")
async def custom_events(ctx: BenchContext) -> list[Measurement]:
    """Validation cost in the tracker; aggregator throughput with 30 % custom events."""
    async with ctx.task("custom events: tracker validation cost"):
        validated, plain = await asyncio.to_thread(_tracker_rates, ctx.scale(20_000, 2_000), ctx.repeat_count)
    value, baseline = median(validated), median(plain)
    target, met = at_most(value / baseline, TARGET_VALIDATION_RATIO, "x")
    rows = [
        Measurement(
            "custom events: tracker.custom (validated)",
            value,
            "µs",
            baseline=baseline,
            baseline_name="the same span event, not validated",
            target=target,
            met=met,
            notes="per event, on the current span; registry lookup + jsonschema-rs + the span event",
            samples=validated,
        )
    ]
    custom, plain_rates, count, customs = await _throughput(ctx)
    value, baseline = median(custom), median(plain_rates)
    target, met = at_least(value / baseline, TARGET_THROUGHPUT_RATIO, "x")
    rows.append(
        Measurement(
            "custom events: aggregator throughput, 30% custom",
            value,
            "events/s",
            baseline=baseline,
            baseline_name="the same workload without custom events",
            target=target,
            met=met,
            notes=f"{count:,} events of which {customs:,} custom; pre-filled stream -> committed rollups; "
            "the two drains alternate which goes first",
            samples=custom,
        )
    )
    return rows
