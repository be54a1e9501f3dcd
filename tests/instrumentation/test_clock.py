"""An injected clock times what the tracker and the ASGI middleware record (simulations, the demo).

Without a clock nothing changes (the SDK reads the system clock); with a :class:`ManualClock`
every event, session span and request span carries the clock's times, so a session's duration and
a request's latency are what the simulation says, whatever the real time it took.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from studyin_analytics.instrumentation import StudyInTracker, instrument_app, semconv
from studyin_analytics.instrumentation.clock import SYSTEM_CLOCK, ManualClock, datetime_of
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

pytestmark = pytest.mark.unit

T0 = datetime(2026, 10, 5, 7, 30, 0, 123456, tzinfo=UTC)


def _ns(moment: datetime) -> int:
    return ManualClock(moment).time_ns()


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(T0)
    assert clock.now() == T0 and datetime_of(clock) == T0
    clock.advance(90.5)
    assert clock.now() == T0 + timedelta(seconds=90.5)
    assert clock.monotonic() == clock.time_ns() / 1e9
    clock.set(T0 - timedelta(days=3))
    assert clock.now() == T0 - timedelta(days=3)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))
    assert abs(datetime_of(SYSTEM_CLOCK) - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_session_and_its_events_carry_the_clocks_times() -> None:
    pipeline = Pipeline()
    clock = ManualClock(T0)
    tracker = StudyInTracker(
        tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, clock=clock
    )
    with tracker.session("learner-1") as session:
        assert session.started_at == T0
        clock.advance(600)
        tracker.material_view("learner-1", "ecg-basics", "pdf", session=session)
        clock.advance(1200)
    span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    assert (span.start_time, span.end_time) == (_ns(T0), _ns(T0 + timedelta(minutes=30)))
    times = {event.name: event.timestamp for s in pipeline.spans() for event in s.events}
    assert times[semconv.event_name("session_start")] == _ns(T0)
    assert times[semconv.event_name("material_view")] == _ns(T0 + timedelta(minutes=10))
    assert times[semconv.event_name("session_end")] == _ns(T0 + timedelta(minutes=30))
    end = next(e for e in span.events if e.name == semconv.event_name("session_end"))
    assert end.attributes is not None and end.attributes[semconv.FIELD_ATTRIBUTES["duration_s"]] == 1800.0


def test_a_stateless_session_ends_at_the_clocks_time() -> None:
    pipeline = Pipeline()
    clock = ManualClock(T0)
    tracker = StudyInTracker(
        tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, clock=clock
    )
    ticket = tracker.begin_session("learner-2")
    assert ticket.started_at == T0
    clock.advance(300)
    tracker.end_session("learner-2", ticket.session_id, started_at=ticket.started_at)
    span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    assert (span.start_time, span.end_time) == (_ns(T0), _ns(T0 + timedelta(minutes=5)))
    assert [e.timestamp for e in span.events] == [_ns(T0 + timedelta(minutes=5))]


def test_request_spans_last_as_long_as_the_clock_moved() -> None:
    pipeline = Pipeline()
    clock = ManualClock(T0)
    app = FastAPI()

    @app.get("/slow/{item}")
    async def slow(item: str) -> dict[str, Any]:
        clock.advance(0.25)  # the simulated work of this request
        return {"item": item}

    instrument_app(app, tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, clock=clock)

    async def call() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/slow/7")).status_code

    assert asyncio.run(call()) == 200
    server = [s for s in pipeline.spans() if s.name.startswith("GET")]
    assert [(s.start_time, s.end_time) for s in server] == [(_ns(T0), _ns(T0) + 250_000_000)]


def test_without_a_clock_times_are_the_systems() -> None:
    pipeline = Pipeline()
    tracker = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    assert tracker.clock is SYSTEM_CLOCK
    before = datetime.now(UTC)
    with tracker.session("learner-3"):
        pass
    span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    assert span.start_time is not None and span.start_time >= _ns(before)
