"""Request durations, recorded into the histograms at collection time, off the request."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import NonRecordingSpan, SpanContext, set_span_in_context

__all__ = ["DeferredDurations"]


class DeferredDurations:
    """Requests hand their duration here; it reaches the histogram at collection.

    A request appends its duration and attribute set (and, with a span, that span's context, so
    the histogram's exemplars still point at the request's trace) to a deque (well under a
    microsecond);
    the values are recorded into the stock duration histograms, every one of them (exact counts
    and sums, no sampling), by the callback of an observable gauge, which the SDK runs at each
    collection just before it reads the histograms, and at shutdown. The SDK's per-measurement
    cost (attribute hashing and aggregation, most of a metrics-only request's overhead) thus
    runs in the metric reader's thread instead of the request. The gauge reports how many
    durations each collection recorded. Bounded: past ``max_pending`` values, the request that
    overflows records them itself. One per meter (the SDK registers a gauge name once per
    meter), shared by every middleware using that meter.
    """

    GAUGE = "studyin.http.server.deferred_durations"

    def __init__(self, meter: Any, max_pending: int = 100_000) -> None:
        self._pending: deque[tuple[Any, Any, float, dict[str, Any], dict[str, Any], SpanContext | None]] = (
            deque()
        )
        self.max_pending = max_pending
        meter.create_observable_gauge(
            self.GAUGE,
            callbacks=[self._on_collect],
            unit="{request}",
            description="Request durations recorded at this collection",
        )

    @classmethod
    def for_meter(cls, meter: Any) -> DeferredDurations:
        with _DEFERRED_LOCK:
            entry = _DEFERRED.get(id(meter))
            if entry is None or entry[0] is not meter:
                entry = _DEFERRED[id(meter)] = (meter, cls(meter))
            return entry[1]

    def add(
        self,
        histograms: tuple[Any, Any],
        duration_s: float,
        new: dict[str, Any],
        old: dict[str, Any],
        span_context: SpanContext | None = None,
    ) -> None:
        self._pending.append((histograms[0], histograms[1], duration_s, new, old, span_context))
        if len(self._pending) > self.max_pending:
            self.flush()

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Record every pending duration (safe from any thread, concurrent with ``add``)."""
        pending = self._pending
        count = 0
        while True:
            try:
                histogram_new, histogram_old, duration_s, new, old, span_context = pending.popleft()
            except IndexError:
                return count
            ctx = None if span_context is None else set_span_in_context(NonRecordingSpan(span_context))
            if histogram_new is not None:
                histogram_new.record(duration_s, new, context=ctx)
            if histogram_old is not None:
                histogram_old.record(max(round(duration_s * 1000), 0), old, context=ctx)
            count += 1

    def _on_collect(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.flush())]


_DEFERRED: dict[int, tuple[Any, DeferredDurations]] = {}
_DEFERRED_LOCK = threading.Lock()
