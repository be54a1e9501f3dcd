"""Which rollups raw events can rebuild, and how: the registry of ``rollups rebuild`` (pure, no I/O).

A rebuild replaces one UTC day of a table at a time (:mod:`.rebuild` runs the transactions).
Each table registers a :class:`Rebuild`: the column its rows are placed in time by, and either

* ``rows``: a function of the day's :class:`Recount` (the day's raw events counted by the very
  :class:`.counting.Counts` the live rounds count with, plus what the stored sessions count in
  that day) returning the table's rows, or
* ``insert_sql``: one ``INSERT INTO <table> ... SELECT ...`` of the day's rows, with ``$1`` and
  ``$2`` the day's bounds (``timestamptz``, ``[$1, $2)``), for a rollup that is a plain
  ``GROUP BY`` of raw events (e.g. a per-type daily count).

A new rollup over raw events registers itself with one line, ``register(Rebuild(...))``, and
grants the rebuild role ``SELECT, INSERT, DELETE`` on its table in its migration.

Not rebuildable, kept right by the live rounds alone (exactly-once, commutative merges):

* ``gamification_stats``: all-time per-learner state (XP total, level, achievements, streaks)
  that needs every event since the learner began, and raw events are kept only
  ``raw_retention_days``;
* ``learning_sessions``: a session counts at its earliest recorded start, which may be older
  than raw retention; the rebuild *reads* it for what sessions count in the per-day and
  per-hour tables (a session's count and study time, exactly as the live merge counted them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from .counting import HOUR_EVENTS, HOUR_SESSIONS, HOUR_STUDY_SECONDS
from .rollup_sql import AI, DAILY, DAILY_LEARNERS, HOURLY, STUDY_EPSILON_S, SUMMARY, SYSTEM, SYSTEM_HOURLY
from .rollups import DAY_US, HOUR_US, Rollup
from .sessions import Session, StudyDeltas

__all__ = ["REBUILDS", "Rebuild", "Recount", "day_bounds", "register"]

Row = tuple[Any, ...]


class Recount(Rollup):
    """One UTC day recounted: its raw events (:meth:`add`) and the stored sessions (:meth:`add_session`).

    The per-day and per-hour rows come out exactly as the live merges built them: the same
    counting, and sessions counted by :meth:`.sessions.StudyDeltas.count` from the stored row, which
    says what the live merge counted (``started_at``, ``ended_at``, ``study_s``). Only keys of
    ``day`` are kept: a session's study time may spread into the days around it.
    """

    __slots__ = ("day", "study")

    def __init__(self, day: date | None) -> None:
        """``day``: the UTC day whose keys are kept (``None``: every key, e.g. to compare with)."""
        super().__init__()
        self.day = None if day is None else (day - date(1970, 1, 1)).days
        self.study = StudyDeltas()

    def add_session(self, user: str, session: Session) -> None:
        self.study.count(user, session)

    def _study_of_day(self) -> StudyDeltas:
        day, study = self.day, self.study
        if day is None:
            return study
        return StudyDeltas(
            {k: v for k, v in study.hourly.items() if k[1] * HOUR_US // DAY_US == day},
            {k: v for k, v in study.daily.items() if k[1] == day},
        )

    def daily_rows(self) -> list[Row]:
        return self._daily_rows(self._study_of_day())

    def hourly_counts(self) -> dict[tuple[str, int], list[Any]]:
        """(user, hour) -> counters at :class:`.counting.HourlyAt` positions, sessions included."""
        return self._hourly_with(self._study_of_day())

    def hourly_rows(self) -> list[Row]:
        return [(user, _datetime(hour * HOUR_US), *c) for (user, hour), c in self.hourly_counts().items()]

    def ai_rows(self) -> list[Row]:
        return self._ai_rows()

    def system_rows(self) -> list[Row]:
        return self._system_rows()

    def summary_rows(self) -> list[Row]:
        """The hourly summary with ``active_users`` last: the learners whose hourly row is active
        (an event, a session start or study time), as the live merge counts them."""
        hourly = self.hourly_counts()
        active: dict[int, int] = {}
        for (_user, hour), c in hourly.items():
            if c[HOUR_EVENTS] > 0 or c[HOUR_SESSIONS] > 0 or c[HOUR_STUDY_SECONDS] >= STUDY_EPSILON_S:
                active[hour] = active.get(hour, 0) + 1
        rows = self._summary_rows(hourly)
        return [(*row, active.get(_hour_of(row[0]), 0)) for row in rows]


@dataclass(frozen=True, slots=True)
class Rebuild:
    """How one table is rebuilt for a UTC day (see the module docstring)."""

    table: str
    time_column: str
    """The column placing a row in time: a day's rows are those with it in the day."""
    time_type: Literal["date", "timestamptz"]
    columns: tuple[str, ...] = ()
    rows: Callable[[Recount], Sequence[Row]] | None = None
    insert_sql: str | None = None
    derived_from: str | None = None
    """A table this one is computed from (registered before it): rebuilding that one rebuilds this one too."""

    def __post_init__(self) -> None:
        if (self.rows is None) == (self.insert_sql is None):
            raise ValueError(f"{self.table}: give exactly one of rows and insert_sql")
        if self.rows is not None and not self.columns:
            raise ValueError(f"{self.table}: rows need their columns")

    @property
    def delete_sql(self) -> str:
        """Delete the day's rows; ``$1``, ``$2``: the day's bounds as :meth:`bounds` gives them."""
        return f"DELETE FROM {self.table} WHERE {self.time_column} >= $1 AND {self.time_column} < $2"

    def bounds(self, day: date) -> tuple[Any, Any]:
        """The bounds of ``day`` in this table's time column (``date`` or ``timestamptz``)."""
        return (day, day + timedelta(days=1)) if self.time_type == "date" else day_bounds(day)


REBUILDS: dict[str, Rebuild] = {}
"""Rebuildable tables by name, in the order a day rebuilds them."""


def register(rebuild: Rebuild) -> Rebuild:
    """Make ``rebuild.table`` rebuildable by ``rollups rebuild`` (one line per rollup)."""
    if rebuild.table in REBUILDS:
        raise ValueError(f"{rebuild.table} is registered already")
    REBUILDS[rebuild.table] = rebuild
    return rebuild


register(Rebuild(DAILY.table, "day", "date", DAILY.columns, Recount.daily_rows))
# Learners per day (0023) are the day's active per-learner rows, counted from those just rebuilt.
register(
    Rebuild(
        DAILY_LEARNERS,
        "day",
        "date",
        insert_sql=f"""
        INSERT INTO {DAILY_LEARNERS} (day, learners)
        SELECT day, count(*) FROM {DAILY.table}
        WHERE day >= ($1::timestamptz AT TIME ZONE 'UTC')::date
          AND day < ($2::timestamptz AT TIME ZONE 'UTC')::date
          AND (events > 0 OR sessions > 0 OR study_seconds >= {STUDY_EPSILON_S})
        GROUP BY day""",
        derived_from=DAILY.table,
    )
)
register(Rebuild(HOURLY.table, "hour", "timestamptz", HOURLY.columns, Recount.hourly_rows))
register(Rebuild(AI.table, "day", "date", AI.columns, Recount.ai_rows))
register(Rebuild(SYSTEM.table, "minute", "timestamptz", SYSTEM.columns, Recount.system_rows))
register(
    Rebuild(SUMMARY.table, "hour", "timestamptz", (*SUMMARY.columns, "active_users"), Recount.summary_rows)
)
# The hourly route rollup (0011) is its hour's minute rows summed, so it is rebuilt from the minute rows
# the same transaction has just rebuilt (registered after them).
register(
    Rebuild(
        SYSTEM_HOURLY.table,
        "hour",
        "timestamptz",
        insert_sql=f"""
        INSERT INTO {SYSTEM_HOURLY.table} ({", ".join(SYSTEM_HOURLY.columns)})
        SELECT date_trunc('hour', minute), route, method, sum(requests), sum(errors), sum(client_errors),
               count_map_sum(errors_by_type), sum(latency_sum_ms), min(latency_min_ms), max(latency_max_ms),
               count_map_sum(latency_hist)
        FROM {SYSTEM.table} WHERE minute >= $1 AND minute < $2 GROUP BY 1, 2, 3""",
        derived_from=SYSTEM.table,
    )
)
# Custom events (0012): one row per day and registered type, counted from their raw rows.
register(
    Rebuild(
        "custom_event_daily",
        "day",
        "date",
        insert_sql="""
        INSERT INTO custom_event_daily (day, event_type, events)
        SELECT (occurred_at AT TIME ZONE 'UTC')::date, event_type, count(*) FROM analytics_events
        WHERE occurred_at >= $1 AND occurred_at < $2 AND event_type LIKE '%/%' GROUP BY 1, 2""",
    )
)

NOT_REBUILDABLE = {
    "gamification_stats": "all-time per-learner state: needs every event since the learner began",
    "learning_sessions": "a session counts at its earliest start, which may be older than raw retention",
}
"""Rollup tables a rebuild refuses, with the reason it gives."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """``[start, end)`` of the UTC ``day`` as aware datetimes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _datetime(time_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=time_us)


def _hour_of(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(hours=1)
