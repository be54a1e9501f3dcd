"""The aggregator's self-telemetry, read from the state it keeps (totals, ``status()``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Observation

from ...exporter.runtime.selftelemetry import (
    AGG_BATCHES_COMMITTED,
    AGG_COMMIT_DURATION,
    AGG_DEAD_LETTER_LENGTH,
    AGG_ENTRIES_CLAIMED,
    AGG_ENTRIES_DEAD_LETTERED,
    AGG_ENTRIES_READ,
    AGG_EVENTS_COMMITTED,
    AGG_EVENTS_DUPLICATE,
    AGG_EVENTS_EXPIRED,
    AGG_LAG,
    AGG_PENDING,
    AGG_UP,
    SERVICE_AGGREGATOR,
    SelfTelemetry,
    export_interval_s,
)

if TYPE_CHECKING:
    from .service import Aggregator

_log = logging.getLogger("studyin_analytics.exporter.runtime.selftelemetry")
"""The logger of self-telemetry (its name from before this class moved here)."""


class AggregatorTelemetry:
    """The aggregator's metrics, read from the state it keeps (totals, ``status()``).

    Counters observe ``Aggregator.totals``; transactions come from its ``on_transaction`` hook;
    the lag and dependency gauges report the last ``status()`` (one health check, refreshed by
    :meth:`refresh` at each scrape of ``/metrics`` and, when metrics are pushed, every export
    interval by :meth:`start`'s task). A gauge whose value is unknown (Redis away) reports nothing
    rather than a stale number.
    """

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator
        self.telemetry = SelfTelemetry(SERVICE_AGGREGATOR, instance_id=aggregator.consumer)
        self.batches = 0
        self.duplicates = 0
        self.status: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        t = self.telemetry
        t.observe(AGG_EVENTS_COMMITTED, lambda: self._total("events_inserted"))
        t.observe(AGG_EVENTS_DUPLICATE, lambda: [Observation(self.duplicates)])
        t.observe(AGG_EVENTS_EXPIRED, lambda: self._total("events_expired"))
        t.observe(AGG_ENTRIES_READ, lambda: self._total("entries"))
        t.observe(AGG_ENTRIES_DEAD_LETTERED, lambda: self._total("dead_lettered"))
        t.observe(AGG_ENTRIES_CLAIMED, lambda: self._total("claimed"))
        t.observe(AGG_BATCHES_COMMITTED, lambda: [Observation(self.batches)])
        t.observe(AGG_LAG, lambda: self._gauge("lag"))
        t.observe(AGG_PENDING, lambda: self._gauge("pending"))
        t.observe(AGG_DEAD_LETTER_LENGTH, lambda: self._gauge("dead_letter_length"))
        t.observe(AGG_UP, self._up)
        self._commit_duration = t.histogram(AGG_COMMIT_DURATION)
        aggregator.on_transaction = self.on_transaction

    def on_transaction(self, rows: int, inserted: int, seconds: float) -> None:
        self.batches += 1
        self.duplicates += max(rows - inserted, 0)
        self._commit_duration.record(seconds)

    def _total(self, field: str) -> list[Observation]:
        return [Observation(int(getattr(self.aggregator.totals, field)))]

    def _gauge(self, key: str) -> list[Observation]:
        value = self.status.get(key)
        return [Observation(int(value))] if isinstance(value, int) else []

    def _up(self) -> list[Observation]:
        if not self.status:
            return []
        return [
            Observation(1 if self.status.get(key) == "ok" else 0, {"db.system.name": system})
            for key, system in (("redis", "redis"), ("postgres", "postgresql"))
        ]

    async def refresh(self) -> None:
        """Take a fresh ``status()`` for the gauges (it never raises: failures are reported in it)."""
        self.status = await self.aggregator.status()

    def observe_status(self, status: dict[str, Any]) -> None:
        """Use a ``status()`` taken by someone else (the health server's probes)."""
        self.status = status

    async def start(self) -> None:
        """When metrics are pushed, keep the gauges fresh between scrapes."""
        if self.telemetry.pushing and self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(export_interval_s()))

    async def _refresh_loop(self, interval_s: float) -> None:
        # Ends on ``_closing`` too: redis-py can swallow a cancellation that lands during a
        # command (the status refresh reads Redis), and the loop would then run on forever.
        while not self._closing:
            try:
                await self.refresh()
            except Exception as exc:  # never let telemetry take the aggregator down
                _log.warning("self-telemetry refresh failed: %s", type(exc).__name__)
            if not self._closing:
                await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._task is not None:
            self._closing = True
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({self._task}, timeout=5)
            self._task = None
        await asyncio.to_thread(self.telemetry.shutdown)
