"""Time sources of the tracker and the ASGI middleware: the system's (default) or one you inject.

An app never passes a clock: without one, the tracker and the middleware read the system clock
as OpenTelemetry does. A simulation (the demo's history, tests) passes a :class:`ManualClock` to
``StudyInTracker(clock=...)`` and ``instrument_app(..., clock=...)`` and moves it itself, so
events, sessions and request spans carry simulated times (and durations) without patching the
system clock. Only times that reach the telemetry come from the clock; timeouts, caches and the
exporter keep real time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock", "datetime_of", "stamp"]

_NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    """Wall-clock time (Unix nanoseconds) and a monotonic time (seconds) for durations."""

    def time_ns(self) -> int: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The system's clocks (``time.time_ns``, ``time.monotonic``)."""

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told (:meth:`set`, :meth:`advance`); thread-safe.

    Its monotonic time is its wall time in seconds: a simulation that sets it backwards (to
    replay another learner's earlier request) gets correspondingly earlier times from both.
    """

    def __init__(self, start: datetime | int) -> None:
        self._lock = threading.Lock()
        self._ns = start if isinstance(start, int) else _ns_of(start)

    def time_ns(self) -> int:
        return self._ns

    def monotonic(self) -> float:
        return self._ns / _NS_PER_S

    def now(self) -> datetime:
        """The clock's time as an aware UTC datetime (microseconds)."""
        return datetime_of(self)

    def set(self, moment: datetime | int) -> None:
        with self._lock:
            self._ns = moment if isinstance(moment, int) else _ns_of(moment)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._ns += round(seconds * _NS_PER_S)


def _ns_of(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("the clock's time must be timezone-aware")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * 1000


def stamp(clock: Clock) -> int | None:
    """An explicit time for the SDK from an injected clock; ``None`` (the SDK reads its own) otherwise."""
    return None if clock is SYSTEM_CLOCK else clock.time_ns()


def datetime_of(clock: Clock) -> datetime:
    """``clock``'s wall time as an aware UTC datetime (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=clock.time_ns() // 1000)
