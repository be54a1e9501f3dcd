"""The time window of events: the one rule for what the gateway refuses and the aggregator stores.

An event (a span event, or the ``api_request`` of an HTTP server span at its end time) is
admitted when its time lies

* no later than ``max_event_future_s`` after the receiver's clock (default 600 s: the clock skew a
  host may have; Loki and Cortex accept samples at most 10 minutes ahead by default, their
  ``creation_grace_period``). Event times come from the servers of the instrumented app, so this only
  tolerates skew; a later time is a wrong clock or a forged request. Accepting it would create a
  daily partition for its day (a few thousand such days exhaust PostgreSQL's lock table) and let it
  win every last-writer-wins rollup until that day comes;
* no earlier than the first UTC day of raw retention (``raw_retention_days``): older partitions
  are dropped, so such an event could neither be stored nor deduplicated.

The gateway refuses spans carrying a time outside the window (OTLP ``partial_success``); the
aggregator dead-letters events later than the window (both paths: the in-process exporter does not
pass the gateway) and leaves out older ones (``events_expired``). Partitions are only created
inside the window (``aggregator/storage/schema.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ..instrumentation.settings import Settings

_NS_PER_S = 1_000_000_000
_NS_PER_US = 1_000


def oldest_day(raw_retention_days: int, today: date | None = None) -> date:
    """The first UTC day inside raw retention: events on earlier days are not stored."""
    return (today or datetime.now(UTC).date()) - timedelta(days=raw_retention_days)


@dataclass(frozen=True)
class EventWindow:
    """Event times admitted at one moment: ``earliest_ns <= time <= latest_ns`` (Unix nanoseconds)."""

    earliest_ns: int
    latest_ns: int
    max_future_s: int
    retention_days: int

    @classmethod
    def of(cls, settings: Settings, now_ns: int | None = None) -> EventWindow:
        now_ns = time.time_ns() if now_ns is None else now_ns
        today = datetime.fromtimestamp(now_ns // _NS_PER_S, UTC).date()
        first = oldest_day(settings.raw_retention_days, today)
        earliest = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()) * _NS_PER_S
        return cls(
            earliest,
            now_ns + settings.max_event_future_s * _NS_PER_S,
            settings.max_event_future_s,
            settings.raw_retention_days,
        )

    @property
    def earliest_us(self) -> int:
        return self.earliest_ns // _NS_PER_US

    @property
    def latest_us(self) -> int:
        return self.latest_ns // _NS_PER_US

    def too_late(self, what: str) -> str:
        """Why an event timed after the window is refused (no value: only what and the bound)."""
        return f"{what} is more than {self.max_future_s} s ahead of the receiver's clock"

    def too_early(self, what: str) -> str:
        return f"{what} is older than raw retention ({self.retention_days} days)"

    def problem(self, unix_nano: int, what: str) -> str | None:
        """Why ``unix_nano`` is outside the window, or ``None``."""
        if unix_nano > self.latest_ns:
            return self.too_late(what)
        if unix_nano < self.earliest_ns:
            return self.too_early(what)
        return None
