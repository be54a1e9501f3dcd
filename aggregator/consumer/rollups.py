"""Rollups: how newly inserted events change the analytics tables.

Inside one transaction (a round of batches, or one batch of redelivered entries) the aggregator

1. copies the raw events straight into ``analytics_events`` (binary ``COPY``, the same work as
   a bare bulk load). The primary key refuses an event that is stored already (a redelivered
   entry, a re-exported span), repeated within the batch, or being inserted by another member
   at that moment (the ``COPY`` waits for that transaction, then fails): the transaction is
   rolled back and the entries go *the careful way* (:func:`insert_events` with
   ``careful=True``): one row per event id, the stored events found first by primary-key
   probes, only the others copied and rolled up. Entries delivered before go that way at once.
2. rolls exactly those new events up: :class:`Rollup` accumulates per-key deltas in one pass
   over the events (a few dictionary updates each) and :meth:`Rollup.apply` copies them into the
   connection's delta tables and merges each table with one ``INSERT ... SELECT ... ON CONFLICT
   DO UPDATE``: one upsert per key, however many events it aggregates.

So every rollup moves exactly once per event, whatever the bus redelivers.

Every update commutes (sums, maxima, set unions, last-writer-wins on ``(time, event_id)``),
so transactions may be applied in any order by any number of aggregators. Sessions are the one
choice that is not a sum (a session is started and ended once, :mod:`.sessions`): they are
merged first, under the lock of their rows, and what a changed session had counted is taken
back in the same transaction, so the result is again independent of order. To keep concurrent
aggregators free of deadlocks, every statement touches its keys in sorted order (``ORDER BY``
the conflict key) and the tables are always updated in the same order, one statement after
the other; the one-row-per-hour dashboard summary, the hottest row, comes last so its lock is
held only until the commit.

Semantics (mirrored by the independent ground truth in ``tests/support/workload/truth.py``):
counts per user need a ``user_hash``; a session (learner and ``session_id``) counts once, at its
earliest recorded start; its study time (the earliest ``session_end``'s ``duration_s``, at
most its recorded span, refused above :data:`MAX_SECONDS`) is split over the UTC days and hours
it covered; latency histograms use the buckets of :mod:`.histogram`; ``active_users`` of an hour
counts the learners with an event, a session start or study time in it, from the (user, hour)
rows of ``user_activity_hourly`` a transaction created (``RETURNING xmax = 0``) or emptied, so
it is exact without a ``DISTINCT`` over history. Numbers may arrive as strings holding one; a field
the rollups cannot use (only possible through the OTLP gateway: the tracker validates its
events) makes the entry fail with :class:`RollupInputError` naming the event type and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import orjson

from ...instrumentation.events import MAX_SECONDS
from . import histogram
from .mapping import RAW_COLUMNS, EventRow, RawRecord, dumps_json, rows_of
from .sessions import RECORDED_START, Mark, Session, StudyDeltas

MINUTE_US = 60_000_000
HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)
STUDY_EPSILON_S = 5e-7
"""Less study time than this is none: study time is counted in whole microseconds, and taking a
session's back in floating point can leave a residue of about 1e-12 s."""


class RollupInputError(ValueError):
    """An event field the rollups read has a value they cannot use (names event type and field)."""


async def setup_connection(conn: asyncpg.Connection) -> None:
    """Once per aggregator connection: its delta tables, and ``jsonb`` as JSON text.

    The delta tables are temporary (they live as long as the connection) and empty themselves
    at every commit. The aggregator never reads ``jsonb`` into Python; it writes JSON text it
    encoded itself (orjson), and the binary ``COPY`` needs asyncpg's own text codec.
    """
    await conn.reset_type_codec("jsonb", schema="pg_catalog")
    await conn.execute(
        ";\n".join(
            f"CREATE TEMP TABLE IF NOT EXISTS {d.temp} (LIKE {d.table} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
            for d in DELTA_TABLES
        )
    )


# --- the raw insert ------------------------------------------------------------------------------

_PROBE_STORED = """
SELECT s.event_id
FROM unnest($1::uuid[], $2::timestamptz[]) AS n(event_id, occurred_at)
JOIN analytics_events AS s ON s.event_id = n.event_id AND s.occurred_at = n.occurred_at
"""
"""Events of a batch that are stored already: one primary-key probe each (run as a nested loop:
a hash or merge join would read whole day partitions)."""


async def stored_event_ids(conn: asyncpg.Connection, records: Sequence[RawRecord]) -> set[Any]:
    """Ids of ``records`` already in ``analytics_events`` (as this transaction sees it).

    The planner settings are reset after a successful probe only: a probe that fails leaves
    the transaction aborted (the caller rolls back, which undoes ``SET LOCAL`` anyway), and a
    reset sent then would fail too and replace the probe's own error (e.g. a transient one,
    which must be retried) with ``InFailedSQLTransactionError``.
    """
    await conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    found = await conn.fetch(_PROBE_STORED, [r[0] for r in records], [r[1] for r in records])
    await conn.execute("SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT")
    return {row[0] for row in found}


async def insert_events(
    conn: asyncpg.Connection,
    records: Sequence[RawRecord],
    rollup: Rollup | None,
    *,
    careful: bool = False,
) -> int:
    """Inside the batch transaction: insert raw events and roll up the new ones.

    ``rollup`` is the accumulated rollup of ``records`` (``None``: computed here). Returns the
    number of events that were new. Not ``careful``, an event that is stored already, or twice
    in ``records``, raises ``asyncpg.UniqueViolationError``: roll back and call again with
    ``careful=True``, which keeps one row per event id and leaves stored events out (and raises
    the same only if another transaction inserted one of them meanwhile: roll back and call
    again).
    """
    if careful and records:
        unique = list({r[0]: r for r in records}.values())  # an entry may repeat another's spans
        stored = await stored_event_ids(conn, unique)
        if stored or len(unique) < len(records):
            records = [r for r in unique if r[0] not in stored]
            rollup = None
    if not records:
        return 0
    await conn.copy_records_to_table("analytics_events", records=records, columns=RAW_COLUMNS)
    if rollup is None:
        rollup = Rollup()
        rollup.add(rows_of(records))
    await rollup.apply(conn)
    return len(records)


# --- typed reads of event fields ------------------------------------------------------------------


def _bad(event_type: str, field: str, value: Any, expected: str) -> RollupInputError:
    return RollupInputError(
        f"event {event_type!r}: field {field!r} must be {expected}, got {type(value).__name__}"
    )


def _number(value: Any, field: str, event_type: str) -> float | None:
    """A value that is not an int or float: a string holding a number (as PostgreSQL's
    ``::numeric`` would take it), or an error naming the field. ``None`` if not finite."""
    if type(value) is str:
        try:
            number = float(value.strip())
        except ValueError:
            raise _bad(event_type, field, value, "a number") from None
        return number if math.isfinite(number) else None
    raise _bad(event_type, field, value, "a number")


def _int(properties: dict[str, Any], field: str, event_type: str, default: int = 0) -> int:
    """An integer field (floats truncate); absent, null or non-finite: ``default``."""
    value: Any = properties.get(field)
    kind = type(value)  # exact types: bool is not a number here, as in JSON
    if kind is int:
        return value  # type: ignore[no-any-return]
    if value is None:
        return default
    if kind is not float:
        value = _number(value, field, event_type)
        if value is None:
            return default
    return int(value) if math.isfinite(value) else default


def _float(properties: dict[str, Any], field: str, event_type: str) -> float:
    """A number field as float; absent, null or non-finite (stored as JSON null): 0."""
    value: Any = properties.get(field)
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else 0.0
    if kind is int:
        return float(value)
    if value is None:
        return 0.0
    number = _number(value, field, event_type)
    return 0.0 if number is None else number


def _text(value: Any, default: str) -> str:
    """A label: a string as it is, any other value as its JSON text (``default`` when absent or null)."""
    if type(value) is str:
        return value
    if value is None:
        return default
    return dumps_json(value)


def _material(value: Any) -> str | None:
    """An element of ``materials_touched`` as ``text[]`` holds it (JSON null: NULL)."""
    return None if value is None else _text(value, "")


def _count(counts: dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1


# --- the accumulator ------------------------------------------------------------------------------


class Rollup:
    """Per-key deltas of a set of new events, merged into the tables by :meth:`apply`.

    Keys are integers of the UTC day, hour and minute (``time_us // DAY_US`` ...), the
    same integer the raw row's time comes from. Count maps are dicts (histogram buckets as
    ints), JSON-encoded only when applied. The hourly dashboard summary is derived at apply
    time from the per-user hourly rows and the per-minute system rows, plus the events per
    type and hour, the only per-event count it needs of its own.
    """

    __slots__ = ("ai", "by_type", "daily", "gamification", "hourly", "sessions", "system")

    def __init__(self) -> None:
        self.daily: dict[tuple[str, int], list[Any]] = {}
        """(user, day) -> [sessions, study_seconds, viewed, completed, xp, events]"""
        self.hourly: dict[tuple[str, int], list[Any]] = {}
        """(user, hour) -> [events, sessions, study_seconds, viewed, completed, xp, ai_interactions]"""
        self.gamification: dict[str, list[Any]] = {}
        """user -> [xp, level, achievements, streak key (time_us, id bytes), current streak,
        streak event id, longest streak, last activity time_us]"""
        self.ai: dict[tuple[str, int], list[Any]] = {}
        """(user, day) -> [interactions, tokens_in, tokens_out, latency_sum, latency_hist, models,
        topics, feedback_count, rating_sum, ratings]"""
        self.system: dict[tuple[int, str, str], list[Any]] = {}
        """(minute, route, method) -> [requests, errors, client_errors, errors_by_type, latency_sum,
        latency_min, latency_max, latency_hist]"""
        self.by_type: dict[tuple[int, str], int] = {}
        """(hour, event type) -> events, users or not"""
        self.sessions: dict[tuple[str, Any], Session] = {}
        """(user, session id) -> the earliest start and end of the session among these events"""

    @property
    def keys(self) -> int:
        """Rows this rollup will upsert, about (its size in memory is ~600 B per key)."""
        return (
            len(self.daily)
            + len(self.hourly)
            + len(self.gamification)
            + len(self.ai)
            + len(self.system)
            + len(self.sessions)
        )

    def add(self, rows: Iterable[EventRow]) -> None:
        """Count ``rows`` (new events, unique by id). Raises :class:`RollupInputError`, having
        possibly counted part of ``rows``: discard the accumulator then."""
        daily, hourly, gamification, by_type = self.daily, self.hourly, self.gamification, self.by_type
        for row in rows:
            event_type = row.event_type
            time_us = row.time_us
            hour = time_us // HOUR_US
            key = (hour, event_type)
            by_type[key] = by_type.get(key, 0) + 1
            if event_type == "api_request":
                self._request(row.properties, time_us)
            user = row.user_hash
            if user is None:
                continue
            day = time_us // DAY_US
            day_row = daily.get((user, day))
            if day_row is None:
                day_row = daily[(user, day)] = [0, 0.0, 0, 0, 0, 0]
            hour_row = hourly.get((user, hour))
            if hour_row is None:
                hour_row = hourly[(user, hour)] = [0, 0, 0.0, 0, 0, 0, 0]
            state = gamification.get(user)
            if state is None:
                state = gamification[user] = [0, 1, None, None, 0, None, 0, time_us]
            elif time_us > state[7]:
                state[7] = time_us
            day_row[5] += 1
            hour_row[0] += 1
            if event_type == "api_request":
                continue
            if event_type == "material_view":
                day_row[2] += 1
                hour_row[3] += 1
            elif event_type == "xp_awarded":
                xp = _int(row.properties, "xp_amount", event_type)
                day_row[4] += xp
                hour_row[5] += xp
                state[0] += xp
            elif event_type == "ai_coach_interaction":
                hour_row[6] += 1
                self._coach(user, day, row.properties, event_type)
            elif event_type == "session_start":
                if row.session_id is not None:
                    self._session_start(row, user)
            elif event_type == "session_end":
                if row.session_id is not None:
                    self._session_end(row, user)
            elif event_type == "material_complete":
                day_row[3] += 1
                hour_row[4] += 1
            elif event_type == "level_up":
                state[1] = max(state[1], _int(row.properties, "level", event_type, 1))
            elif event_type == "achievement_unlocked":
                if state[2] is None:
                    state[2] = set()
                state[2].add(_text(row.properties.get("achievement_id"), "None"))
            elif event_type == "ai_coach_feedback":
                self._coach(user, day, row.properties, event_type)
            elif event_type in ("streak_updated", "streak_broken"):
                self._streak(row, state)

    def _request(self, properties: dict[str, Any], time_us: int) -> None:
        duration = properties.get("duration_ms")
        if type(duration) is not float:
            duration = _float(properties, "duration_ms", "api_request")
        route, method, error = properties.get("route"), properties.get("method"), properties.get("error_type")
        key = (
            time_us // MINUTE_US,
            route if type(route) is str else _text(route, "None"),
            method if type(method) is str else _text(method, "_OTHER"),
        )
        metrics = self.system.get(key)
        if metrics is None:
            metrics = self.system[key] = [0, 0, 0, {}, 0.0, duration, duration, {}]
        metrics[0] += 1
        if error is not None:
            metrics[1] += 1
            errors = metrics[3]
            error = _text(error, "")
            errors[error] = errors.get(error, 0) + 1
        elif 400 <= _int(properties, "status_code", "api_request") < 500:
            metrics[2] += 1
        metrics[4] += duration
        if duration < metrics[5]:
            metrics[5] = duration
        elif duration > metrics[6]:
            metrics[6] = duration
        buckets = metrics[7]
        bucket = histogram.bucket(duration)
        buckets[bucket] = buckets.get(bucket, 0) + 1

    def _coach(self, user: str, day: int, properties: dict[str, Any], event_type: str) -> None:
        metrics = self.ai.get((user, day))
        if metrics is None:
            metrics = self.ai[(user, day)] = [0, 0, 0, 0.0, {}, {}, {}, 0, 0, {}]
        if event_type == "ai_coach_interaction":
            latency = _float(properties, "latency_ms", event_type)
            metrics[0] += 1
            metrics[1] += _int(properties, "tokens_in", event_type)
            metrics[2] += _int(properties, "tokens_out", event_type)
            metrics[3] += latency
            _count(metrics[4], histogram.bucket(latency))
            _count(metrics[5], _text(properties.get("model"), "None"))
            _count(metrics[6], _text(properties.get("topic_category"), "None"))
        else:
            rating = _int(properties, "rating", event_type)
            metrics[7] += 1
            metrics[8] += rating
            _count(metrics[9], rating)

    def _session(self, row: EventRow, user: str) -> Session:
        key = (user, row.session_id)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = Session()
        return session

    def _session_start(self, row: EventRow, user: str) -> None:
        self._session(row, user).add_start(Mark(row.time_us, row.event_id))

    def _session_end(self, row: EventRow, user: str) -> None:
        properties = row.properties
        duration = _float(properties, "duration_s", "session_end")
        if duration > MAX_SECONDS:  # its study time would be split over that many hours
            raise RollupInputError(
                f"event 'session_end': field 'duration_s' must be at most {MAX_SECONDS} s, got {duration:g}"
            )
        materials = properties.get("materials_touched")
        session = self._session(row, user)
        recorded_start = properties.get(RECORDED_START)
        if type(recorded_start) is int:  # carried by the session's own span (see .sessions)
            session.add_start(Mark(recorded_start, row.event_id))
        session.add_end(
            Mark(row.time_us, row.event_id),
            max(duration, 0.0),
            _int(properties, "xp_earned", "session_end"),
            [_material(m) for m in materials] if isinstance(materials, (list, tuple)) else [],
            _text(properties.get("end_reason"), "completed"),
        )

    def _streak(self, row: EventRow, state: list[Any]) -> None:
        updated = row.event_type == "streak_updated"
        properties = row.properties
        days = _int(properties, "streak_days", row.event_type) if updated else 0
        reported = days if updated else _int(properties, "previous_streak_days", row.event_type)
        key = (row.time_us, row.event_id.bytes)
        if state[3] is None or key > state[3]:  # last writer wins on (time, event id)
            state[3], state[4], state[5] = key, days, row.event_id
        state[6] = max(state[6], reported)

    # --- into the tables ------------------------------------------------------------------------

    async def apply(self, conn: asyncpg.Connection) -> None:
        """Merge the deltas into the tables (inside the batch transaction), in the fixed order.

        Sessions first: what they change in the per-learner rollups depends on the stored
        sessions (:meth:`_apply_sessions`). Then each table's deltas travel by binary ``COPY``
        into the connection's delta table (emptied at commit), and one ``INSERT ... SELECT ...
        ON CONFLICT DO UPDATE`` merges them (the hourly table's with the summary's, which counts
        the learners that became active in each hour). Nothing in ``self`` changes: a rolled-back
        transaction may apply the same rollup again.
        """
        study = await self._apply_sessions(conn) if self.sessions else StudyDeltas()
        hourly = self._hourly_with(study)
        deltas = (
            (DAILY, self._daily_rows(study), UPSERT_DAILY),
            (GAMIFICATION, self._gamification_rows(), UPSERT_GAMIFICATION),
            (AI, self._ai_rows(), UPSERT_AI),
            (SYSTEM, self._system_rows(), UPSERT_SYSTEM),
            (HOURLY, [(user, _datetime(hour * HOUR_US), *c) for (user, hour), c in hourly.items()], None),
            (SUMMARY, self._summary_rows(hourly), UPSERT_HOURLY_AND_SUMMARY),
        )
        for delta, rows, upsert in deltas:
            if rows:
                await conn.copy_records_to_table(delta.temp, records=rows, columns=delta.columns)
                if upsert is not None:
                    await conn.execute(upsert)
        if study.takes_back_study:
            await conn.execute(CLEAR_STUDY_RESIDUES)

    async def _apply_sessions(self, conn: asyncpg.Connection) -> StudyDeltas:
        """Merge the sessions (see :mod:`.sessions`); returns what they change in the rollups.

        One upsert inserts the new sessions and locks the stored ones (in key order, like every
        statement here), returning those this rollup changes as they are stored; the merged
        state of those is written back. Under the lock no other aggregator can change them
        before this transaction ends, so the difference counted is exact.
        """
        await conn.copy_records_to_table(
            SESSIONS.temp,
            records=[s.row(user, sid) for (user, sid), s in self.sessions.items()],
            columns=SESSIONS.columns,
        )
        study = StudyDeltas()
        merged: list[tuple[Any, ...]] = []
        for record in await conn.fetch(UPSERT_SESSIONS):
            user, sid = record["user_hash"], record["session_id"]
            batch = self.sessions[(user, sid)]
            if record["created"]:
                study.count(user, batch)
            else:
                stored = Session.from_record(record)
                after = stored.merged(batch)
                study.move(user, stored, after)
                merged.append(after.row(user, sid))
        if merged:
            await conn.execute(f"DELETE FROM {SESSIONS.temp}")
            await conn.copy_records_to_table(SESSIONS.temp, records=merged, columns=SESSIONS.columns)
            await conn.execute(UPDATE_SESSIONS)
        return study.nonzero()

    def _daily_rows(self, study: StudyDeltas) -> list[tuple[Any, ...]]:
        daily = dict(self.daily)
        for key, (sessions, micros) in study.daily.items():
            counters = list(daily.get(key) or (0, 0.0, 0, 0, 0, 0))
            counters[0] += sessions
            counters[1] += micros / 1e6
            daily[key] = counters
        return [(user, _day(day), *c) for (user, day), c in daily.items()]

    def _hourly_with(self, study: StudyDeltas) -> dict[tuple[str, int], list[Any]]:
        """The per-learner hourly deltas with what the sessions changed (``self`` unchanged)."""
        hourly = dict(self.hourly)
        for key, (sessions, micros) in study.hourly.items():
            counters = list(hourly.get(key) or (0, 0, 0.0, 0, 0, 0, 0))
            counters[1] += sessions
            counters[2] += micros / 1e6
            hourly[key] = counters
        return hourly

    def _gamification_rows(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for user, g in self.gamification.items():
            achievements = [] if g[2] is None else list(g[2])
            streak_as_of = None if g[3] is None else _datetime(g[3][0])
            rows.append((user, g[0], g[1], achievements, g[4], g[6], streak_as_of, g[5], _datetime(g[7])))
        return rows

    def _ai_rows(self) -> list[tuple[Any, ...]]:
        return [
            (user, _day(day), *c[:4], _json(c[4]), _json(c[5]), _json(c[6]), c[7], c[8], _json(c[9]))
            for (user, day), c in self.ai.items()
        ]

    def _system_rows(self) -> list[tuple[Any, ...]]:
        return [
            (
                _datetime(minute * MINUTE_US),
                route,
                method,
                *c[:3],
                _json(c[3]),
                c[4],
                c[5],
                max(0.0, c[6]),
                _json(c[7]),
            )
            for (minute, route, method), c in self.system.items()
        ]

    def _summary_rows(self, hourly: dict[tuple[str, int], list[Any]]) -> list[tuple[Any, ...]]:
        """Per hour: events by type; the learners' counters summed over their hourly rows; requests."""
        hours: dict[int, list[Any]] = {}

        def totals(hour: int) -> list[Any]:
            total = hours.get(hour)
            if total is None:
                # events, by type, sessions, study_seconds, viewed, completed, xp, ai, api, api_errors
                total = hours[hour] = [0, {}, 0, 0.0, 0, 0, 0, 0, 0, 0]
            return total

        for (hour, event_type), count in self.by_type.items():
            total = totals(hour)
            total[0] += count
            total[1][event_type] = count
        for (_user, hour), c in hourly.items():
            total = totals(hour)
            for i in range(1, 7):  # sessions, study_seconds, viewed, completed, xp, ai_interactions
                total[i + 1] += c[i]
        for (minute, _route, _method), c in self.system.items():
            total = totals(minute * MINUTE_US // HOUR_US)
            total[8] += c[0]
            total[9] += c[1]
        return [(_datetime(hour * HOUR_US), c[0], _json(c[1]), *c[2:]) for hour, c in hours.items()]


def _day(day: int) -> date:
    return _EPOCH_DAY + timedelta(days=day)


def _datetime(time_us: int) -> datetime:
    """The UTC datetime of integer microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=time_us)


def _json(value: dict[Any, Any] | list[Any]) -> str:
    """JSON text of a count map (integer keys, histogram buckets, become strings) or a list."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class DeltaTable(NamedTuple):
    """A rollup table and the columns its deltas carry, with the key they merge on."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]

    @property
    def temp(self) -> str:
        """The connection's temporary table of this table's deltas."""
        return f"aggregator_delta_{self.table}"


SESSIONS = DeltaTable(
    "learning_sessions",
    (
        "user_hash",
        "session_id",
        "started_at",
        "start_event_id",
        "ended_at",
        "end_event_id",
        "duration_s",
        "study_s",
        "xp_earned",
        "materials_touched",
        "end_reason",
    ),
    ("user_hash", "session_id"),
)
DAILY = DeltaTable(
    "daily_activity_summary",
    (
        "user_hash",
        "day",
        "sessions",
        "study_seconds",
        "materials_viewed",
        "materials_completed",
        "xp",
        "events",
    ),
    ("user_hash", "day"),
)
GAMIFICATION = DeltaTable(
    "gamification_stats",
    (
        "user_hash",
        "xp_total",
        "level",
        "achievements",
        "current_streak",
        "longest_streak",
        "streak_as_of",
        "streak_event_id",
        "last_activity_at",
    ),
    ("user_hash",),
)
AI = DeltaTable(
    "ai_coach_metrics",
    (
        "user_hash",
        "day",
        "interactions",
        "tokens_in",
        "tokens_out",
        "latency_ms_sum",
        "latency_hist",
        "models",
        "topics",
        "feedback_count",
        "rating_sum",
        "ratings",
    ),
    ("user_hash", "day"),
)
SYSTEM = DeltaTable(
    "system_metrics",
    (
        "minute",
        "route",
        "method",
        "requests",
        "errors",
        "client_errors",
        "errors_by_type",
        "latency_sum_ms",
        "latency_min_ms",
        "latency_max_ms",
        "latency_hist",
    ),
    ("minute", "route", "method"),
)
HOURLY = DeltaTable(
    "user_activity_hourly",
    (
        "user_hash",
        "hour",
        "events",
        "sessions",
        "study_seconds",
        "materials_viewed",
        "materials_completed",
        "xp",
        "ai_interactions",
    ),
    ("user_hash", "hour"),
)
SUMMARY = DeltaTable(
    "hourly_analytics_summary",
    (
        "hour",
        "events",
        "events_by_type",
        "sessions",
        "study_seconds",
        "materials_viewed",
        "materials_completed",
        "xp",
        "ai_interactions",
        "api_requests",
        "api_errors",
    ),  # active_users: from the hourly upsert
    ("hour",),
)
DELTA_TABLES = (SESSIONS, DAILY, GAMIFICATION, AI, SYSTEM, HOURLY, SUMMARY)
"""In the order they are merged, always: a fixed table order keeps concurrent aggregators free of
deadlocks (the hourly summary, the hottest row, last)."""


def _insert(delta: DeltaTable, alias: str, select: str | None = None) -> str:
    """``INSERT ... SELECT`` of a delta table in key order (the lock order), up to ``DO UPDATE SET``."""
    columns = ", ".join(delta.columns)
    key = ", ".join(delta.key)
    return (
        f"INSERT INTO {delta.table} AS {alias} ({columns})\n"
        f"SELECT {select or columns} FROM {delta.temp} ORDER BY {key}\n"
        f"ON CONFLICT ({key}) DO UPDATE SET\n"
        "    changed_xid = DEFAULT,  -- the exporter's change tracking (revision 0009_export)\n"
    )


def _merge(stored: str, added: str) -> str:
    """``count_map_add`` of two count maps, skipped (a function call per row) when nothing is added."""
    return f"CASE WHEN {added} = '{{}}'::jsonb THEN {stored} ELSE count_map_add({stored}, {added}) END"


_NIL = "'00000000-0000-0000-0000-000000000000'::uuid"


def _is_earlier(mark: str) -> str:
    """The batch's start or end (``mark`` is ``start`` or ``end``) comes before the stored one."""
    at = "started_at" if mark == "start" else "ended_at"
    return (
        f"(EXCLUDED.{at} IS NOT NULL AND (s.{at} IS NULL OR (EXCLUDED.{at}, EXCLUDED.{mark}_event_id) "
        f"< (s.{at}, coalesce(s.{mark}_event_id, {_NIL}))))"
    )


UPSERT_SESSIONS = (
    _insert(SESSIONS, "s")
    + f"""    user_hash = s.user_hash
WHERE {_is_earlier("start")} OR {_is_earlier("end")}
RETURNING (xmax = 0) AS created, s.*
"""
)
"""New sessions are inserted as the batch has them; a stored session is locked and, if the batch
has an earlier start or end for it, returned unchanged (the no-op update) for the merge."""

UPDATE_SESSIONS = f"""
UPDATE {SESSIONS.table} AS s SET
    started_at = t.started_at, start_event_id = t.start_event_id, ended_at = t.ended_at,
    end_event_id = t.end_event_id, duration_s = t.duration_s, study_s = t.study_s,
    xp_earned = t.xp_earned, materials_touched = t.materials_touched, end_reason = t.end_reason
FROM {SESSIONS.temp} AS t
WHERE s.user_hash = t.user_hash AND s.session_id = t.session_id
"""
"""The merged sessions (locked by :data:`UPSERT_SESSIONS` in this transaction) written back."""

UPSERT_DAILY = (
    _insert(DAILY, "d")
    + """
    sessions = d.sessions + EXCLUDED.sessions,
    study_seconds = d.study_seconds + EXCLUDED.study_seconds,
    materials_viewed = d.materials_viewed + EXCLUDED.materials_viewed,
    materials_completed = d.materials_completed + EXCLUDED.materials_completed,
    xp = d.xp + EXCLUDED.xp,
    events = d.events + EXCLUDED.events
"""
)

_STREAK_IS_NEWER = """EXCLUDED.streak_as_of IS NOT NULL AND (g.streak_as_of IS NULL
             OR (EXCLUDED.streak_as_of, EXCLUDED.streak_event_id) > (g.streak_as_of, g.streak_event_id))"""

_SORTED_ACHIEVEMENTS = """user_hash, xp_total, level,
       CASE WHEN cardinality(achievements) < 2 THEN achievements
            ELSE ARRAY(SELECT a FROM unnest(achievements) AS a ORDER BY a) END,
       current_streak, longest_streak, streak_as_of, streak_event_id, last_activity_at"""
"""Achievements in the database's order, like the union on conflict (the set is distinct already)."""

UPSERT_GAMIFICATION = (
    _insert(GAMIFICATION, "g", _SORTED_ACHIEVEMENTS)
    + f"""
    xp_total = g.xp_total + EXCLUDED.xp_total,
    level = greatest(g.level, EXCLUDED.level),
    achievements = CASE WHEN cardinality(EXCLUDED.achievements) = 0 THEN g.achievements
                        ELSE ARRAY(SELECT DISTINCT a FROM unnest(g.achievements || EXCLUDED.achievements) AS a
                                   ORDER BY a) END,
    current_streak = CASE WHEN {_STREAK_IS_NEWER}
        THEN EXCLUDED.current_streak ELSE g.current_streak END,
    streak_event_id = CASE WHEN {_STREAK_IS_NEWER}
        THEN EXCLUDED.streak_event_id ELSE g.streak_event_id END,
    streak_as_of = CASE WHEN {_STREAK_IS_NEWER}
        THEN EXCLUDED.streak_as_of ELSE g.streak_as_of END,
    longest_streak = greatest(g.longest_streak, EXCLUDED.longest_streak),
    last_activity_at = greatest(g.last_activity_at, EXCLUDED.last_activity_at)
"""
)

UPSERT_AI = (
    _insert(AI, "a")
    + f"""
    interactions = a.interactions + EXCLUDED.interactions,
    tokens_in = a.tokens_in + EXCLUDED.tokens_in,
    tokens_out = a.tokens_out + EXCLUDED.tokens_out,
    latency_ms_sum = a.latency_ms_sum + EXCLUDED.latency_ms_sum,
    latency_hist = {_merge("a.latency_hist", "EXCLUDED.latency_hist")},
    models = {_merge("a.models", "EXCLUDED.models")},
    topics = {_merge("a.topics", "EXCLUDED.topics")},
    feedback_count = a.feedback_count + EXCLUDED.feedback_count,
    rating_sum = a.rating_sum + EXCLUDED.rating_sum,
    ratings = {_merge("a.ratings", "EXCLUDED.ratings")}
"""
)

UPSERT_SYSTEM = (
    _insert(SYSTEM, "m")
    + f"""
    requests = m.requests + EXCLUDED.requests,
    errors = m.errors + EXCLUDED.errors,
    client_errors = m.client_errors + EXCLUDED.client_errors,
    errors_by_type = {_merge("m.errors_by_type", "EXCLUDED.errors_by_type")},
    latency_sum_ms = m.latency_sum_ms + EXCLUDED.latency_sum_ms,
    latency_min_ms = least(m.latency_min_ms, EXCLUDED.latency_min_ms),
    latency_max_ms = greatest(m.latency_max_ms, EXCLUDED.latency_max_ms),
    latency_hist = {_merge("m.latency_hist", "EXCLUDED.latency_hist")}
"""
)

UPSERT_HOURLY_AND_SUMMARY = f"""
WITH hourly AS (
    {_insert(HOURLY, "h")}
        events = h.events + EXCLUDED.events,
        sessions = h.sessions + EXCLUDED.sessions,
        study_seconds = h.study_seconds + EXCLUDED.study_seconds,
        materials_viewed = h.materials_viewed + EXCLUDED.materials_viewed,
        materials_completed = h.materials_completed + EXCLUDED.materials_completed,
        xp = h.xp + EXCLUDED.xp,
        ai_interactions = h.ai_interactions + EXCLUDED.ai_interactions
    RETURNING user_hash, hour, (xmax = 0) AS created, events, sessions, study_seconds
), active AS (
    -- Learners active in an hour (an event, a session start or study time in it) now, less
    -- those that were before: a row this batch created was not; a stored row's counters were
    -- its new ones less the batch's delta (a session that changed can leave a learner inactive).
    SELECT h.hour, sum(
        (h.events > 0 OR h.sessions > 0 OR h.study_seconds >= {STUDY_EPSILON_S})::int
        - (NOT h.created AND (h.events > d.events OR h.sessions > d.sessions
                              OR h.study_seconds - d.study_seconds >= {STUDY_EPSILON_S}))::int
    )::int AS users
    FROM hourly AS h JOIN {HOURLY.temp} AS d USING (user_hash, hour)
    GROUP BY h.hour
)
INSERT INTO {SUMMARY.table} AS s
    (hour, events, events_by_type, active_users, sessions, study_seconds, materials_viewed,
     materials_completed, xp, ai_interactions, api_requests, api_errors)
SELECT t.hour, t.events, t.events_by_type, coalesce(a.users, 0), t.sessions, t.study_seconds,
       t.materials_viewed, t.materials_completed, t.xp, t.ai_interactions, t.api_requests, t.api_errors
FROM {SUMMARY.temp} AS t LEFT JOIN active AS a USING (hour)
ORDER BY t.hour
ON CONFLICT (hour) DO UPDATE SET
    changed_xid = DEFAULT,
    events = s.events + EXCLUDED.events,
    events_by_type = count_map_add(s.events_by_type, EXCLUDED.events_by_type),
    active_users = s.active_users + EXCLUDED.active_users,
    sessions = s.sessions + EXCLUDED.sessions,
    study_seconds = s.study_seconds + EXCLUDED.study_seconds,
    materials_viewed = s.materials_viewed + EXCLUDED.materials_viewed,
    materials_completed = s.materials_completed + EXCLUDED.materials_completed,
    xp = s.xp + EXCLUDED.xp,
    ai_interactions = s.ai_interactions + EXCLUDED.ai_interactions,
    api_requests = s.api_requests + EXCLUDED.api_requests,
    api_errors = s.api_errors + EXCLUDED.api_errors
"""
# Every hour of a (user, hour) row also has events or study time of the batch, so the summary
# holds every hour of ``active``: the LEFT JOIN loses nothing.

CLEAR_STUDY_RESIDUES = ";\n".join(
    f"UPDATE {delta.table} AS r SET study_seconds = 0 FROM {delta.temp} AS d "
    f"WHERE {' AND '.join(f'r.{k} = d.{k}' for k in delta.key)} "
    f"AND r.study_seconds <> 0 AND abs(r.study_seconds) < {STUDY_EPSILON_S}"
    for delta in (DAILY, HOURLY, SUMMARY)
)
"""After study time was taken back: what is left of it below :data:`STUDY_EPSILON_S` becomes 0
(rows of this transaction only, locked already). A row left with no events and no study time
stays, all zero: the aggregator may not delete (docs/aggregator.md), and readers skip it."""
