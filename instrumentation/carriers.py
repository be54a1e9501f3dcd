"""How validated events travel: the :class:`EventCarrier` interface, :class:`SpanEventCarrier`
(OpenTelemetry span events, the default) and :class:`LogRecordCarrier` (span events on short request
spans, log records wherever an event would wait in an open span). The event models know nothing of
either."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import Logger, LoggerProvider, get_logger_provider
from opentelemetry.trace import Link, Span, SpanKind

from . import semconv
from .span_events import add_event
from .version import __version__

if TYPE_CHECKING:
    from .clock import Clock
    from .sessions import LearningSession

__all__ = ["SESSION_SPAN_EVENT_CAP", "EventCarrier", "LogRecordCarrier", "SpanEventCarrier"]


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
            add_event(session.span, name, attributes, at)
            return
        current = trace.get_current_span()
        if current.is_recording():
            add_event(current, name, attributes, at)
            return
        if session is not None and session.span.is_recording() and session._claim_event_slot():
            add_event(session.span, name, attributes, at)
            return
        span = self._tracer.start_span(semconv.STANDALONE_EVENT_SPAN, start_time=at)
        add_event(span, name, attributes, at)
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


def _is_short_request(span: Span) -> bool:
    """An HTTP request span being served: its events leave with the response. A WebSocket (no HTTP
    method; ``ws``/``wss`` scheme), a session span or any other span may stay open for minutes."""
    if getattr(span, "kind", None) is not SpanKind.SERVER:
        return False
    attributes: Any = getattr(span, "attributes", None) or {}
    if attributes.get("http.request.method") is None and attributes.get("http.method") is None:
        return False
    return attributes.get("url.scheme", attributes.get("http.scheme")) not in _SOCKET_SCHEMES


_SOCKET_SCHEMES = frozenset({"ws", "wss"})


class LogRecordCarrier:
    """Domain events routed by where they would wait (issue 16).

    * the current span is an HTTP request being served: a span event on it (it leaves with the
      response; ``span.add_event`` costs about half a ``logger.emit``, docs/instrumentation.md);
    * ``session_end`` of a recording session span: on that span, which ends and leaves with it;
    * anything else (no current span, a session span, a WebSocket or another long-lived span): an
      OpenTelemetry log record named ``studyin.<type>``, exported by the log processor within its
      schedule delay (``OTEL_BLRP_SCHEDULE_DELAY``) whether or not any span ends.

    A log record carries the event's attributes, a random :data:`~.semconv.EVENT_UID` (its identity
    on the bus, so redelivery and re-export store it once) and the trace and span ids of the
    current span, else of the session's span. Sessions are spans as with :class:`SpanEventCarrier`.
    """

    def __init__(self, tracer: trace.Tracer, logger: Logger, clock: Clock | None = None) -> None:
        self._spans = SpanEventCarrier(tracer, clock)
        self._logger = logger
        self._clock = clock

    @classmethod
    def create(
        cls,
        tracer_provider: trace.TracerProvider | None = None,
        logger_provider: LoggerProvider | None = None,
        clock: Clock | None = None,
    ) -> LogRecordCarrier:
        """A carrier on these providers (default: the global ones, as ``opentelemetry-instrument`` sets)."""
        tracer = trace.get_tracer(semconv.SCOPE_NAME, __version__, tracer_provider=tracer_provider)
        provider = logger_provider or get_logger_provider()
        return cls(tracer, provider.get_logger(semconv.SCOPE_NAME, __version__), clock)

    def record(
        self, name: str, attributes: dict[str, Any], session: LearningSession | None, *, lifecycle: bool
    ) -> None:
        at = time.time_ns() if self._clock is None else self._clock.time_ns()
        if session is not None and lifecycle and session.span.is_recording():
            add_event(session.span, name, attributes, at)
            return
        current = trace.get_current_span()
        if current.is_recording() and _is_short_request(current):
            add_event(current, name, attributes, at)
            return
        context = None
        if session is not None and not current.get_span_context().is_valid:
            context = trace.set_span_in_context(session.span)  # correlate with the session
        attributes[semconv.EVENT_UID] = os.urandom(16).hex()
        self._logger.emit(timestamp=at, context=context, event_name=name, attributes=attributes)

    def start_session_span(self, attributes: dict[str, Any], start_time_ns: int | None = None) -> Span:
        return self._spans.start_session_span(attributes, start_time_ns)
