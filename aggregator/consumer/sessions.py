"""Learning sessions: started once, ended once, study time bounded by the span as recorded.

A session's events may come from the app's backend (the tracker) or from a browser through
``POST /api/analytics/events/track``, which anyone holding a learner's token can call as often
as they like. What the server records is trusted over what the event says:

* a session (per learner and session id) **counts once**, at its earliest recorded start;
* it is **ended once**, by its earliest ``session_end``; a repeated end changes nothing;
* its **study time** is the end's ``duration_s`` bounded by the span as recorded (end time
  minus start time, both stamped where the event was recorded), counted only once both are
  known, and spread over ``[end - study, end]``.

A start is recorded by a ``session_start`` event, or by the tracker's own span of the session
(``studyin.learning_session``, which carries its ``session_end`` and started with the session:
the mapping copies that start into the end's properties as :data:`RECORDED_START`). Events a
browser posts never travel on such a span, so only the backend's record of a start counts there.

"Earliest" orders by ``(time, event id)``, so the outcome does not depend on the order in which
events arrive. That makes the rule a *choice*, not a commutative delta like the other rollups:
when an earlier start or end arrives after a later one was counted, what the session had
counted is taken back and the new state counted (:meth:`StudyDeltas.move`). The stored row says
what was counted (``started_at``, ``ended_at``, ``study_s``), so taking it back is exact whatever
happened in between; the merge runs under the row's lock (see ``rollups.Rollup.apply``).

Everything here is pure: times are integer microseconds, so counting a window and taking it
back cancel exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
RECORDED_START = "recorded_start_us"
"""Property of a ``session_end`` carried by its session's span: the span's start (microseconds)."""
_NO_ID = b""
"""Rows written before revision 0007 have no event id: they sort before any id at the same time."""


class Mark(NamedTuple):
    """When a start or end was recorded, and by which event (ties on time break on the id)."""

    time_us: int
    event_id: uuid.UUID | None

    @property
    def key(self) -> tuple[int, bytes]:
        return (self.time_us, _NO_ID if self.event_id is None else self.event_id.bytes)


def _earlier(a: Mark | None, b: Mark | None) -> bool:
    """``a`` is set and comes before ``b`` (or ``b`` is unset)."""
    return a is not None and (b is None or a.key < b.key)


def study_us(start: Mark | None, end: Mark | None, duration_s: float | None) -> int:
    """The study time a session counts: its reported duration, at most its recorded span."""
    if start is None or end is None or duration_s is None:
        return 0
    reported = round(duration_s * 1e6)  # PostgreSQL's make_interval(secs => s) rounds the same way
    return max(0, min(reported, end.time_us - start.time_us))


@dataclass(slots=True)
class Session:
    """A session's start and end and what the end reported; ``counted_us`` is its study time."""

    start: Mark | None = None
    end: Mark | None = None
    duration_s: float | None = None
    xp_earned: int = 0
    materials_touched: list[str | None] = field(default_factory=list)
    end_reason: str | None = None
    counted_us: int = 0

    def add_start(self, mark: Mark) -> None:
        if _earlier(mark, self.start):
            self.start = mark
            self.counted_us = study_us(self.start, self.end, self.duration_s)

    def add_end(
        self, mark: Mark, duration_s: float, xp_earned: int, materials: list[str | None], reason: str
    ) -> None:
        if _earlier(mark, self.end):
            self.end = mark
            self.duration_s, self.xp_earned, self.materials_touched = duration_s, xp_earned, materials
            self.end_reason = reason
            self.counted_us = study_us(self.start, self.end, self.duration_s)

    def merged(self, other: Session) -> Session:
        """This (stored) session with ``other``'s start and end where they come earlier."""
        out = Session(
            self.start,
            self.end,
            self.duration_s,
            self.xp_earned,
            self.materials_touched,
            self.end_reason,
            self.counted_us,
        )
        changed = False
        if _earlier(other.start, out.start):
            out.start, changed = other.start, True
        if _earlier(other.end, out.end):
            out.end, out.duration_s, out.xp_earned = other.end, other.duration_s, other.xp_earned
            out.materials_touched, out.end_reason, changed = other.materials_touched, other.end_reason, True
        if changed:  # an unchanged row keeps what it counted (rows migrated from revision 0004)
            out.counted_us = study_us(out.start, out.end, out.duration_s)
        return out

    def row(self, user_hash: str, session_id: uuid.UUID) -> tuple[Any, ...]:
        """The ``learning_sessions`` row (columns of ``rollups.SESSIONS``)."""
        start, end = self.start, self.end
        return (
            user_hash,
            session_id,
            None if start is None else micros_to_datetime(start.time_us),
            None if start is None else start.event_id,
            None if end is None else micros_to_datetime(end.time_us),
            None if end is None else end.event_id,
            self.duration_s,
            self.counted_us / 1e6,
            self.xp_earned,
            self.materials_touched,
            self.end_reason,
        )

    @classmethod
    def from_record(cls, record: Any) -> Session:
        """A stored ``learning_sessions`` row (a mapping with its columns)."""
        started, ended = record["started_at"], record["ended_at"]
        return cls(
            None if started is None else Mark(datetime_to_micros(started), record["start_event_id"]),
            None if ended is None else Mark(datetime_to_micros(ended), record["end_event_id"]),
            record["duration_s"],
            record["xp_earned"],
            list(record["materials_touched"]),
            record["end_reason"],
            round(record["study_s"] * 1e6),
        )


def micros_to_datetime(time_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=time_us)


def datetime_to_micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def periods(start_us: int, end_us: int, period_us: int) -> Iterator[tuple[int, int]]:
    """(period index, microseconds of [start, end) within it) for every period the interval touches."""
    period = start_us // period_us
    while period * period_us < end_us:
        begin = period * period_us
        yield period, min(begin + period_us, end_us) - max(begin, start_us)
        period += 1


_Counts = dict[tuple[str, int], list[int]]


@dataclass(slots=True)
class StudyDeltas:
    """What sessions add to the per-learner rollups: ``(user, hour)`` and ``(user, day)`` ->
    ``[sessions, study microseconds]``; negative where a changed session took back its count."""

    hourly: _Counts = field(default_factory=dict)
    daily: _Counts = field(default_factory=dict)

    def count(self, user: str, session: Session, sign: int = 1) -> None:
        """Add (``sign`` 1) or take back (-1) what ``session`` counts."""
        if session.start is not None:
            self._add(self.hourly, (user, session.start.time_us // HOUR_US), sign, 0)
            self._add(self.daily, (user, session.start.time_us // DAY_US), sign, 0)
        if session.counted_us > 0 and session.end is not None:
            end = session.end.time_us
            for hour, micros in periods(end - session.counted_us, end, HOUR_US):
                self._add(self.hourly, (user, hour), 0, sign * micros)
            for day, micros in periods(end - session.counted_us, end, DAY_US):
                self._add(self.daily, (user, day), 0, sign * micros)

    def move(self, user: str, before: Session, after: Session) -> None:
        """A stored session changed from ``before`` to ``after``: the difference."""
        self.count(user, before, -1)
        self.count(user, after, 1)

    @staticmethod
    def _add(table: _Counts, key: tuple[str, int], sessions: int, micros: int) -> None:
        counters = table.get(key)
        if counters is None:
            table[key] = [sessions, micros]
        else:
            counters[0] += sessions
            counters[1] += micros

    def nonzero(self) -> StudyDeltas:
        """Without the keys whose changes cancelled out (no row should be created for them)."""
        return StudyDeltas(
            {k: v for k, v in self.hourly.items() if v != [0, 0]},
            {k: v for k, v in self.daily.items() if v != [0, 0]},
        )

    @property
    def takes_back_study(self) -> bool:
        """Some study time is taken back: rows may be left with a float residue of it."""
        return any(v[1] < 0 for v in self.hourly.values()) or any(v[1] < 0 for v in self.daily.values())
