"""How validated events travel: the :class:`EventCarrier` interface and the carrier of today,
:class:`SpanEventCarrier` (OpenTelemetry span events). The event models know nothing of spans, so a
log-record carrier can replace this one when OpenTelemetry deprecates span events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span

from . import semconv

if TYPE_CHECKING:
    from .clock import Clock
    from .sessions import LearningSession

__all__ = ["SESSION_SPAN_EVENT_CAP", "EventCarrier", "SpanEventCarrier"]


class EventCarrier(Protocol):
    """How validated events travel. Attributes are already flat ``studyin.*`` + ``user.hash``."""

    def record(
        self, name: str, attributes: dict[str, Any], session: LearningSession | None, *, lifecycle: bool
    ) -> None: ...

    def start_session_span(self, attributes: dict[str, Any], start_time_ns: int | None = None) -> Span: ...


SESSION_SPAN_EVENT_CAP = 100
"""Events put on one session span at most (the SDK drops events beyond 128 per span)."""


class SpanEventCarrier:
    """Domain events as OpenTelemetry span events.

    * ``session_end`` goes on the session's span (``lifecycle``): the span then ends and is
      exported with it;
    * any other event, ``session_start`` included, goes on the current recording span (the
      HTTP request being served), so it is exported with that request rather than held until
      the session ends (a session whose process dies is still counted as started);
    * with no recording span, on the session's span (up to :data:`SESSION_SPAN_EVENT_CAP`);
    * else on a short ``studyin.event`` span of its own.

    Events carry their ``studyin.session.id`` wherever they travel. With a ``clock``, events and
    the spans started here carry its times (else the SDK reads the system clock).
    """

    def __init__(self, tracer: trace.Tracer, clock: Clock | None = None) -> None:
        self._tracer = tracer
        self._clock = clock

    def record(
        self, name: str, attributes: dict[str, Any], session: LearningSession | None, *, lifecycle: bool
    ) -> None:
        at = None if self._clock is None else self._clock.time_ns()
        if session is not None and lifecycle and session.span.is_recording():
            session.span.add_event(name, attributes, timestamp=at)
            return
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event(name, attributes, timestamp=at)
            return
        if session is not None and session.span.is_recording() and session._claim_event_slot():
            session.span.add_event(name, attributes, timestamp=at)
            return
        span = self._tracer.start_span(semconv.STANDALONE_EVENT_SPAN, start_time=at)
        span.add_event(name, attributes, timestamp=at)
        span.end(end_time=at)

    def start_session_span(self, attributes: dict[str, Any], start_time_ns: int | None = None) -> Span:
        # A session outlives the request that starts it: it is the root of its own trace,
        # linked to that request's span.
        current = trace.get_current_span().get_span_context()
        links = [Link(current)] if current.is_valid else None
        return self._tracer.start_span(
            semconv.LEARNING_SESSION_SPAN,
            context=otel_context.Context(),
            attributes=attributes,
            links=links,
            start_time=start_time_ns
            if start_time_ns is not None or self._clock is None
            else self._clock.time_ns(),
        )
