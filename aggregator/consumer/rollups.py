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
   over the events (a few dictionary updates each, :mod:`.counting`) and :meth:`Rollup.apply`
   copies them into the connection's delta tables and merges each table with one
   ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` (:mod:`.rollup_sql`): one upsert per key,
   however many events it aggregates.

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

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from ..storage.variant import Variant
from .counting import (
    DAY_SESSIONS,
    DAY_STUDY_SECONDS,
    DAY_US,
    GAME_ACHIEVEMENTS,
    GAME_CURRENT_STREAK,
    GAME_LAST_ACTIVITY,
    GAME_LEVEL,
    GAME_LONGEST_STREAK,
    GAME_STREAK_EVENT_ID,
    GAME_STREAK_KEY,
    GAME_XP,
    HOUR_SESSIONS,
    HOUR_STUDY_SECONDS,
    HOUR_US,
    MINUTE_US,
    Counts,
    RollupInputError,
)
from .experiments import INPUT_TYPES, ExperimentInput, apply_experiments
from .learners import LearnerFirsts
from .mapping import EventRow, RawRecord, rows_of
from .raw import copy_raw, probe_stored
from .rollup_sql import (
    AI,
    CLEAR_STUDY_RESIDUES,
    DAILY,
    DELTA_TABLES,
    GAMIFICATION,
    HOURLY,
    LOCK_ROLLUPS_SHARED,
    SESSIONS,
    STUDY_EPSILON_S,
    SUMMARY,
    SYSTEM,
    SYSTEM_HOURLY,
    UPDATE_SESSIONS,
    UPSERT_AI,
    UPSERT_DAILY,
    UPSERT_GAMIFICATION,
    UPSERT_HOURLY_AND_SUMMARY,
    UPSERT_HOURLY_SUMMARY_AND_CUSTOM,
    UPSERT_SESSIONS,
    UPSERT_SYSTEM,
    UPSERT_SYSTEM_HOURLY,
)
from .sessions import Session, StudyDeltas

__all__ = [
    "DAY_US",
    "DELTA_TABLES",
    "HOUR_US",
    "MINUTE_US",
    "SESSIONS",
    "STUDY_EPSILON_S",
    "Rollup",
    "RollupInputError",
    "insert_events",
    "setup_connection",
    "stored_event_ids",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)


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


async def stored_event_ids(
    conn: asyncpg.Connection, records: Sequence[RawRecord], variant: Variant = "plain"
) -> set[Any]:
    """Ids of ``records`` already stored (as this transaction sees it), by primary-key probes
    (:mod:`.raw`: the key of the ``variant``), run as nested loops: a hash or merge join would
    read whole day partitions.

    The planner settings are reset after a successful probe only: a probe that fails leaves
    the transaction aborted (the caller rolls back, which undoes ``SET LOCAL`` anyway), and a
    reset sent then would fail too and replace the probe's own error (e.g. a transient one,
    which must be retried) with ``InFailedSQLTransactionError``.
    """
    await conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    found = await probe_stored(conn, records, variant)
    await conn.execute("SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT")
    return found


async def insert_events(
    conn: asyncpg.Connection,
    records: Sequence[RawRecord],
    rollup: Rollup | None,
    *,
    careful: bool = False,
    variant: Variant = "plain",
) -> int:
    """Inside the batch transaction: insert raw events and roll up the new ones.

    ``rollup`` is the accumulated rollup of ``records`` (``None``: computed here). Returns the
    number of events that were new; ``variant``: the schema's (:mod:`.raw`). Not ``careful``, an
    event that is stored already, or twice in ``records``, raises a duplicate-key error
    (:func:`.raw.is_duplicate_key`): roll back and call again with
    ``careful=True``, which keeps one row per event id and leaves stored events out (and raises
    the same only if another transaction inserted one of them meanwhile: roll back and call
    again).
    """
    if careful and records:
        unique = list({r[0]: r for r in records}.values())  # an entry may repeat another's spans
        stored = await stored_event_ids(conn, unique, variant)
        if stored or len(unique) < len(records):
            records = [r for r in unique if r[0] not in stored]
            rollup = None
    if not records:
        return 0
    await copy_raw(conn, records, variant)
    if rollup is None:
        rollup = Rollup()
        rollup.add(rows_of(records))
    await rollup.apply(conn)
    return len(records)


class Rollup(Counts):
    """The deltas of :class:`.counting.Counts`, merged into the tables by :meth:`apply`.

    Keys are integers of the UTC day, hour and minute (``time_us // DAY_US`` ...), the
    same integer the raw row's time comes from. Count maps are dicts (histogram buckets as
    ints), JSON-encoded only when applied. The hourly dashboard summary is derived at apply
    time from the per-user hourly rows and the per-minute system rows, plus the events per
    type and hour, the only per-event count it needs of its own.
    """

    __slots__ = ("experiment_inputs", "learners")

    def __init__(self) -> None:
        super().__init__()
        self.experiment_inputs: list[ExperimentInput] = []
        """The new events experiments read (:mod:`.experiments`), with a learner."""
        self.learners = LearnerFirsts()
        """First learning events and key links per pseudonym (:mod:`.learners`)."""

    def add(self, rows: Iterable[EventRow]) -> None:
        rows = rows if isinstance(rows, list) else list(rows)
        super().add(rows)
        self.learners.add(rows)
        self.experiment_inputs += [
            (r.user_hash, r.event_type, r.time_us, r.event_id, r.properties)
            for r in rows
            if r.user_hash is not None and (r.event_type in INPUT_TYPES or "/" in r.event_type)
        ]  # custom types ("/"): experiments' custom:T metrics

    async def apply(self, conn: asyncpg.Connection) -> None:
        """Merge the deltas into the tables (inside the batch transaction), in the fixed order.

        Sessions first: what they change in the per-learner rollups depends on the stored
        sessions (:meth:`_apply_sessions`); then the experiments' per-learner state and variant sums
        (:mod:`.experiments`, under per-learner locks). Then each table's deltas travel by binary ``COPY``
        into the connection's delta table (emptied at commit), and one ``INSERT ... SELECT ...
        ON CONFLICT DO UPDATE`` merges them (the hourly table's with the summary's, which counts
        the learners that became active in each hour; ``custom_event_daily``'s from the summary's
        delta rows, sent with it). Nothing in ``self`` changes: a rolled-back
        transaction may apply the same rollup again. First the rollups' shared lock: a rebuild
        replaces a day's rows only while no merge is under way (``rebuild.py``).
        """
        await conn.execute(LOCK_ROLLUPS_SHARED)
        study = await self._apply_sessions(conn) if self.sessions else StudyDeltas()
        await apply_experiments(conn, self.experiment_inputs)
        hourly = self._hourly_with(study)
        deltas = (
            (DAILY, self._daily_rows(study), UPSERT_DAILY),
            (GAMIFICATION, self._gamification_rows(), UPSERT_GAMIFICATION),
            (AI, self._ai_rows(), UPSERT_AI),
            (SYSTEM, self._system_rows(), UPSERT_SYSTEM),
            (SYSTEM_HOURLY, self._system_hourly_rows(), UPSERT_SYSTEM_HOURLY),
            (HOURLY, [(user, _datetime(hour * HOUR_US), *c) for (user, hour), c in hourly.items()], None),
            (SUMMARY, self._summary_rows(hourly), self._summary_upsert()),
        )
        for delta, rows, upsert in deltas:
            if rows:
                await conn.copy_records_to_table(delta.temp, records=rows, columns=delta.columns)
                if upsert is not None:
                    await conn.execute(upsert)
        if study.takes_back_study:
            await conn.execute(CLEAR_STUDY_RESIDUES)
        await self.learners.apply(conn)

    def _summary_upsert(self) -> str:
        """The summary's merge, with ``custom_event_daily``'s when there are custom events (a ``/`` in
        their type): one statement more in the same round trip (:data:`.rollup_sql.UPSERT_CUSTOM_DAILY`)."""
        if any("/" in event_type for _hour, event_type in self.by_type):
            return UPSERT_HOURLY_SUMMARY_AND_CUSTOM
        return UPSERT_HOURLY_AND_SUMMARY

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
            counters[DAY_SESSIONS] += sessions
            counters[DAY_STUDY_SECONDS] += micros / 1e6
            daily[key] = counters
        return [(user, _day(day), *c) for (user, day), c in daily.items()]

    def _hourly_with(self, study: StudyDeltas) -> dict[tuple[str, int], list[Any]]:
        """The per-learner hourly deltas with what the sessions changed (``self`` unchanged)."""
        hourly = dict(self.hourly)
        for key, (sessions, micros) in study.hourly.items():
            counters = list(hourly.get(key) or (0, 0, 0.0, 0, 0, 0, 0))
            counters[HOUR_SESSIONS] += sessions
            counters[HOUR_STUDY_SECONDS] += micros / 1e6
            hourly[key] = counters
        return hourly

    def _gamification_rows(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for user, g in self.gamification.items():
            achievements = [] if g[GAME_ACHIEVEMENTS] is None else list(g[GAME_ACHIEVEMENTS])
            streak_key = g[GAME_STREAK_KEY]
            streak_as_of = None if streak_key is None else _datetime(streak_key[0])
            rows.append(
                (
                    user,
                    g[GAME_XP],
                    g[GAME_LEVEL],
                    achievements,
                    g[GAME_CURRENT_STREAK],
                    g[GAME_LONGEST_STREAK],
                    streak_as_of,
                    g[GAME_STREAK_EVENT_ID],
                    _datetime(g[GAME_LAST_ACTIVITY]),
                )
            )
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

    def _system_hourly_rows(self) -> list[tuple[Any, ...]]:
        """The per-minute route deltas summed by hour (the rows of ``system_metrics_hourly``)."""
        hours: dict[tuple[int, str, str], list[Any]] = {}
        for (minute, route, method), c in self.system.items():
            key = (minute * MINUTE_US // HOUR_US, route, method)
            h = hours.get(key)
            if h is None:
                hours[key] = [c[0], c[1], c[2], dict(c[3]), c[4], c[5], max(0.0, c[6]), dict(c[7])]
                continue
            for i in (0, 1, 2, 4):
                h[i] += c[i]
            h[5] = min(h[5], c[5])
            h[6] = max(h[6], c[6])
            for target, source in ((h[3], c[3]), (h[7], c[7])):
                for k, n in source.items():
                    target[k] = target.get(k, 0) + n
        return [
            (_datetime(hour * HOUR_US), route, method, *h[:3], _json(h[3]), h[4], h[5], h[6], _json(h[7]))
            for (hour, route, method), h in hours.items()
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
