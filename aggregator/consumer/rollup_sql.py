"""The SQL of the rollup merge: delta tables and their upserts (constants only).

Every statement touches its keys in sorted order and the tables are merged in the fixed order of
:data:`DELTA_TABLES`, which keeps concurrent aggregators free of deadlocks (see rollups.py).
"""

from __future__ import annotations

from typing import NamedTuple

STUDY_EPSILON_S = 5e-7
"""Less study time than this is none: study time is counted in whole microseconds, and taking a
session's back in floating point can leave a residue of about 1e-12 s."""


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
SYSTEM_HOURLY = DeltaTable(
    "system_metrics_hourly",
    ("hour", *SYSTEM.columns[1:]),
    ("hour", "route", "method"),
)
"""The per-minute route rollup summed by UTC hour (revision 0011_route_hours): merged from the same
deltas in the same transaction, so each of its rows equals the sum of its hour's minute rows."""
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
DELTA_TABLES = (SESSIONS, DAILY, GAMIFICATION, AI, SYSTEM, SYSTEM_HOURLY, HOURLY, SUMMARY)
"""In the order they are merged, always: a fixed table order keeps concurrent aggregators free of
deadlocks (the hourly summary, the hottest row, last)."""


def _insert(delta: DeltaTable, alias: str, select: str | None = None) -> str:
    """``INSERT ... SELECT`` of a delta table in key order (the lock order), up to ``DO UPDATE SET``."""
    columns = ", ".join(delta.columns)
    key = ", ".join(delta.key)
    return (
        f"INSERT INTO {delta.table} AS {alias} ({columns})\n"
        f"SELECT {select or columns} FROM {delta.temp} ORDER BY {key}\n"
        f"ON CONFLICT ({key}) DO UPDATE SET changed_xid = DEFAULT,\n"  # export change tracking (0009_export)
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

DAILY_LEARNERS = "daily_learners"
"""Learners per UTC day (revision 0023): those with an event, a session start or study time in it."""

UPSERT_DAILY = f"""
WITH daily AS (
    {_insert(DAILY, "d")}
        sessions = d.sessions + EXCLUDED.sessions,
        study_seconds = d.study_seconds + EXCLUDED.study_seconds,
        materials_viewed = d.materials_viewed + EXCLUDED.materials_viewed,
        materials_completed = d.materials_completed + EXCLUDED.materials_completed,
        xp = d.xp + EXCLUDED.xp,
        events = d.events + EXCLUDED.events
    RETURNING user_hash, day, (xmax = 0) AS created, events, sessions, study_seconds
), active AS (
    -- As the hourly summary's active_users (UPSERT_HOURLY_AND_SUMMARY), per day: learners active
    -- now less those that were before this batch's deltas.
    SELECT d.day, sum(
        (d.events > 0 OR d.sessions > 0 OR d.study_seconds >= {STUDY_EPSILON_S})::int
        - (NOT d.created AND (d.events > t.events OR d.sessions > t.sessions
                              OR d.study_seconds - t.study_seconds >= {STUDY_EPSILON_S}))::int
    )::int AS learners
    FROM daily AS d JOIN {DAILY.temp} AS t USING (user_hash, day)
    GROUP BY d.day
)
INSERT INTO {DAILY_LEARNERS} AS l (day, learners)
SELECT day, learners FROM active WHERE learners <> 0
ORDER BY day
ON CONFLICT (day) DO UPDATE SET learners = l.learners + EXCLUDED.learners
"""
"""The per-learner daily rows merged, and the day's learner count moved by the learners that became
(or stopped being) active: only a learner's first event of a day touches the shared day row."""

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

UPSERT_SYSTEM_HOURLY = (
    _insert(SYSTEM_HOURLY, "m")
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
ON CONFLICT (hour) DO UPDATE SET changed_xid = DEFAULT,
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

ROLLUP_LOCK_SPACE = 0x5374_5242  # "StRB": the first key of the two-key advisory lock below
_ROLLUP_LOCK = f"({ROLLUP_LOCK_SPACE}, current_schema()::regnamespace::oid::int)"
LOCK_ROLLUPS_SHARED = f"SELECT pg_advisory_xact_lock_shared{_ROLLUP_LOCK}"
"""Taken by every transaction before it merges rollup deltas (:meth:`.rollups.Rollup.apply`),
held to its commit: many live transactions hold it at once, a rebuild's day (which takes it
exclusively, :data:`LOCK_ROLLUPS_EXCLUSIVE`) waits for them and they for it. Keyed by the
analytics schema, so schemas of one database do not share it (``rebuild.py`` explains the handover)."""
LOCK_ROLLUPS_EXCLUSIVE = f"SELECT pg_advisory_xact_lock{_ROLLUP_LOCK}"
