"""How validated events travel: the :class:`EventCarrier` interface, :class:`SpanEventCarrier`
(OpenTelemetry span events) and :class:`LogRecordCarrier` (span events on short request spans, log
records wherever an event would wait in an open span), and :func:`default_carrier`, the choice of a
tracker built without one. The event models know nothing of either."""

from __future__ import annotations

import itertools
import logging
import os
import threading
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

__all__ = [
    "SESSION_SPAN_EVENT_CAP",
    "SPAN_EVENTS_WARNING",
    "EventCarrier",
    "LogRecordCarrier",
    "SpanEventCarrier",
    "default_carrier",
    "new_event_uid",
]

_log = logging.getLogger(__name__)


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

    @classmethod
    def create(
        cls, tracer_provider: trace.TracerProvider | None = None, clock: Clock | None = None
    ) -> SpanEventCarrier:
        """A carrier on this tracer provider (default: the global one), as the tracker builds it."""
        return cls(trace.get_tracer(semconv.SCOPE_NAME, __version__, tracer_provider=tracer_provider), clock)

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
    attributes = _attribute_dict(span)
    if attributes.get("http.request.method") is None and attributes.get("http.method") is None:
        return False
    scheme = attributes.get("url.scheme")
    if scheme is None:
        scheme = attributes.get("http.scheme")
    return scheme not in _SOCKET_SCHEMES


def _attribute_dict(span: Span) -> Any:
    # The plain dict behind an SDK span's BoundedAttributes: ``span.attributes`` wraps them in a proxy
    # whose ``get`` raises and catches a KeyError for every missing key.
    raw: Any = getattr(span, "_attributes", None)
    if raw is None:
        raw = getattr(span, "attributes", None)
    return getattr(raw, "_dict", raw) or {}


_SOCKET_SCHEMES = frozenset({"ws", "wss"})


_UID_BYTES = 16
_UIDS_PER_BLOCK = 256


class _UidBlock:
    """256 uids from one ``os.urandom`` call; each index is handed out once (``next`` on an
    ``itertools.count`` is atomic under the GIL)."""

    __slots__ = ("hex", "taken")

    def __init__(self) -> None:
        self.hex = os.urandom(_UID_BYTES * _UIDS_PER_BLOCK).hex()
        self.taken = itertools.count()


class _Uids:
    def __init__(self) -> None:
        self.block = _UidBlock()
        self.lock = threading.Lock()

    def next(self) -> str:
        while True:
            block = self.block
            index = next(block.taken)
            if index < _UIDS_PER_BLOCK:
                start = index * 2 * _UID_BYTES
                return block.hex[start : start + 2 * _UID_BYTES]
            self.renew(block)

    def renew(self, spent: _UidBlock | None = None) -> None:
        with self.lock:
            if spent is None or self.block is spent:  # else another thread renewed it already
                self.block = _UidBlock()

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self.block = _UidBlock()  # never the parent's remaining uids


_UIDS = _Uids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_UIDS.after_fork)


def new_event_uid() -> str:
    """A new :data:`~.semconv.EVENT_UID`: 128 bits from ``os.urandom`` as 32 hex digits.

    Drawn from a block of 256 (one system call per block rather than one per event); a forked
    child starts a block of its own, so no two processes hand out the same uid.
    """
    return _UIDS.next()


class LogRecordCarrier:
    """Domain events routed by where they would wait (issue 16).

    * the current span is an HTTP request being served: a span event on it (it leaves with the
      response; ``span.add_event`` costs about half a ``logger.emit``, docs/instrumentation.md);
    * ``session_end`` of a recording session span: on that span, which ends and leaves with it;
    * anything else (no current span, a session span, a WebSocket or another long-lived span): an
      OpenTelemetry log record named ``studyin.<type>`` (:meth:`emit`), exported by the log
      processor within its schedule delay (``OTEL_BLRP_SCHEDULE_DELAY``) whether or not any span
      ends.

    A log record carries the event's attributes, a random :data:`~.semconv.EVENT_UID` (its identity
    on the bus, so redelivery and re-export store it once; :func:`new_event_uid`) and the trace and span
    ids of the current span, else of the session's span. Sessions are spans as with
    :class:`SpanEventCarrier`.
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
        context = otel_context.get_current()
        current = trace.get_current_span(context)
        if current.is_recording() and _is_short_request(current):
            add_event(current, name, attributes, at)
            return
        if session is not None and not current.get_span_context().is_valid:
            context = trace.set_span_in_context(session.span, context)  # correlate with the session
        self.emit(name, attributes, at, context)

    def emit(self, name: str, attributes: dict[str, Any], at: int, context: otel_context.Context) -> None:
        """One event as a log record (``attributes`` gain the uid), correlated with ``context``'s span."""
        attributes[semconv.EVENT_UID] = _UIDS.next()
        self._logger.emit(
            timestamp=at,
            observed_timestamp=at if self._clock is None else None,
            context=context,
            event_name=name,
            attributes=attributes,
        )

    def start_session_span(self, attributes: dict[str, Any], start_time_ns: int | None = None) -> Span:
        return self._spans.start_session_span(attributes, start_time_ns)


SPAN_EVENTS_WARNING = (
    "StudyIn events travel as span events (SpanEventCarrier): no OpenTelemetry LoggerProvider exports "
    "log records in this process, so an event recorded on a long-lived span (a session outside a "
    "request, a WebSocket) waits in memory until that span ends, and a crash loses it. To send such "
    "events at once as log records, set OTEL_LOGS_EXPORTER=studyin_redis (opentelemetry-instrument; "
    "the studyin distro's default) or set a global SDK LoggerProvider with "
    "studyin_analytics.exporter.log_exporter.batch_log_processor() before creating the tracker; "
    "StudyInTracker(carrier=...) chooses explicitly (docs/instrumentation.md, 'Which carrier')"
)
"""Logged once per process, at the first tracker that falls back to span events."""

_span_events_warned = threading.Event()
_PROBE_EVENT = semconv.event_name("session_start")


def default_carrier(
    tracer: trace.Tracer, clock: Clock | None = None, logger_provider: LoggerProvider | None = None
) -> EventCarrier:
    """The carrier of a tracker built without one.

    :class:`LogRecordCarrier` when the logger provider (default: the global one) would export a
    ``studyin.*`` log record: an SDK ``LoggerProvider`` with a log processor, as
    ``opentelemetry-instrument`` sets with ``OTEL_LOGS_EXPORTER=studyin_redis`` (the ``studyin``
    distro's default) or any other logs exporter. Else (no provider, the SDK's provider of
    ``OTEL_LOGS_EXPORTER=none`` with no processor, ``OTEL_SDK_DISABLED``) :class:`SpanEventCarrier`,
    with :data:`SPAN_EVENTS_WARNING` logged once per process: log records would go nowhere.
    """
    logger = (logger_provider or get_logger_provider()).get_logger(semconv.SCOPE_NAME, __version__)
    if logger.enabled(event_name=_PROBE_EVENT):
        _log.debug("StudyIn events: log records where they would wait (LogRecordCarrier)")
        return LogRecordCarrier(tracer, logger, clock)
    if not _span_events_warned.is_set():
        _span_events_warned.set()
        _log.warning(SPAN_EVENTS_WARNING)
    return SpanEventCarrier(tracer, clock)
