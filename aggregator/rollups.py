"""Rollups: how newly inserted events change the analytics tables.

:func:`apply` runs inside the aggregator's batch transaction and sees only the events that
this transaction inserted (duplicates were filtered by the raw insert), so every rollup
moves exactly once per event, whatever the bus redelivers.

Every update commutes (sums, maxima, set unions, last-writer-wins on ``(time, event_id)``),
so batches may be applied in any order by any number of aggregators. To keep concurrent
aggregators free of deadlocks, every statement touches its keys in sorted order and the
tables are always updated in the same order; the one-row-per-hour dashboard summary, the
hottest row, comes last so its lock is held only until the commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from . import histogram
from .mapping import API_REQUEST, EventRow, dumps_json

INSERT_EVENTS = """
INSERT INTO analytics_events (event_id, occurred_at, event_type, user_hash, session_id, properties)
SELECT e.event_id, e.occurred_at, e.event_type, e.user_hash, e.session_id, e.properties::jsonb
FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[], $6::text[])
     AS e(event_id, occurred_at, event_type, user_hash, session_id, properties)
ON CONFLICT DO NOTHING
RETURNING event_id
"""

UPSERT_SESSION_STARTS = """
INSERT INTO learning_sessions (session_id, user_hash, started_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[])
ON CONFLICT (session_id) DO UPDATE SET started_at = EXCLUDED.started_at
"""

UPSERT_SESSION_ENDS = """
INSERT INTO learning_sessions
    (session_id, user_hash, ended_at, duration_s, xp_earned, materials_touched, end_reason)
SELECT s.session_id, s.user_hash, s.ended_at, s.duration_s, s.xp_earned,
       ARRAY(SELECT jsonb_array_elements_text(s.materials::jsonb)), s.end_reason
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::float8[], $5::int[], $6::text[], $7::text[])
     AS s(session_id, user_hash, ended_at, duration_s, xp_earned, materials, end_reason)
ON CONFLICT (session_id) DO UPDATE SET
    ended_at = EXCLUDED.ended_at,
    duration_s = EXCLUDED.duration_s,
    xp_earned = EXCLUDED.xp_earned,
    materials_touched = EXCLUDED.materials_touched,
    end_reason = EXCLUDED.end_reason
"""

UPSERT_DAILY = """
INSERT INTO daily_activity_summary AS d
    (user_hash, day, sessions, study_seconds, materials_viewed, materials_completed, xp, events)
SELECT * FROM unnest(
    $1::text[], $2::date[], $3::int[], $4::float8[], $5::int[], $6::int[], $7::bigint[], $8::int[]
)
ON CONFLICT (user_hash, day) DO UPDATE SET
    sessions = d.sessions + EXCLUDED.sessions,
    study_seconds = d.study_seconds + EXCLUDED.study_seconds,
    materials_viewed = d.materials_viewed + EXCLUDED.materials_viewed,
    materials_completed = d.materials_completed + EXCLUDED.materials_completed,
    xp = d.xp + EXCLUDED.xp,
    events = d.events + EXCLUDED.events
"""

UPSERT_HOURLY_USER = """
INSERT INTO user_activity_hourly AS h
    (user_hash, hour, events, sessions, study_seconds, materials_viewed, materials_completed, xp,
     ai_interactions)
SELECT * FROM unnest(
    $1::text[], $2::timestamptz[], $3::int[], $4::int[], $5::float8[], $6::int[], $7::int[],
    $8::bigint[], $9::int[]
)
ON CONFLICT (user_hash, hour) DO UPDATE SET
    events = h.events + EXCLUDED.events,
    sessions = h.sessions + EXCLUDED.sessions,
    study_seconds = h.study_seconds + EXCLUDED.study_seconds,
    materials_viewed = h.materials_viewed + EXCLUDED.materials_viewed,
    materials_completed = h.materials_completed + EXCLUDED.materials_completed,
    xp = h.xp + EXCLUDED.xp,
    ai_interactions = h.ai_interactions + EXCLUDED.ai_interactions
RETURNING hour, (xmax = 0) AS inserted
"""

UPSERT_GAMIFICATION = """
INSERT INTO gamification_stats AS g
    (user_hash, xp_total, level, achievements, current_streak, longest_streak, streak_as_of,
     streak_event_id, last_activity_at)
SELECT u.user_hash, u.xp, u.level, ARRAY(SELECT jsonb_array_elements_text(u.achievements::jsonb)),
       coalesce(u.streak, 0), coalesce(u.longest, 0), u.streak_as_of, u.streak_event_id, u.last_at
FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[], $5::int[], $6::int[], $7::timestamptz[],
            $8::uuid[], $9::timestamptz[])
     AS u(user_hash, xp, level, achievements, streak, longest, streak_as_of, streak_event_id, last_at)
ON CONFLICT (user_hash) DO UPDATE SET
    xp_total = g.xp_total + EXCLUDED.xp_total,
    level = greatest(g.level, EXCLUDED.level),
    achievements = CASE WHEN cardinality(EXCLUDED.achievements) = 0 THEN g.achievements
                        ELSE ARRAY(SELECT DISTINCT a FROM unnest(g.achievements || EXCLUDED.achievements) AS a
                                   ORDER BY a) END,
    current_streak = CASE
        WHEN EXCLUDED.streak_as_of IS NOT NULL AND (g.streak_as_of IS NULL
             OR (EXCLUDED.streak_as_of, EXCLUDED.streak_event_id) > (g.streak_as_of, g.streak_event_id))
        THEN EXCLUDED.current_streak ELSE g.current_streak END,
    streak_event_id = CASE
        WHEN EXCLUDED.streak_as_of IS NOT NULL AND (g.streak_as_of IS NULL
             OR (EXCLUDED.streak_as_of, EXCLUDED.streak_event_id) > (g.streak_as_of, g.streak_event_id))
        THEN EXCLUDED.streak_event_id ELSE g.streak_event_id END,
    streak_as_of = CASE
        WHEN EXCLUDED.streak_as_of IS NOT NULL AND (g.streak_as_of IS NULL
             OR (EXCLUDED.streak_as_of, EXCLUDED.streak_event_id) > (g.streak_as_of, g.streak_event_id))
        THEN EXCLUDED.streak_as_of ELSE g.streak_as_of END,
    longest_streak = greatest(g.longest_streak, EXCLUDED.longest_streak),
    last_activity_at = greatest(g.last_activity_at, EXCLUDED.last_activity_at)
"""

UPSERT_AI = """
INSERT INTO ai_coach_metrics AS a
    (user_hash, day, interactions, tokens_in, tokens_out, latency_ms_sum, latency_hist, models, topics,
     feedback_count, rating_sum, ratings)
SELECT u.user_hash, u.day, u.interactions, u.tokens_in, u.tokens_out, u.latency_ms_sum,
       u.latency_hist::jsonb, u.models::jsonb, u.topics::jsonb, u.feedback_count, u.rating_sum,
       u.ratings::jsonb
FROM unnest($1::text[], $2::date[], $3::int[], $4::bigint[], $5::bigint[], $6::float8[], $7::text[],
            $8::text[], $9::text[], $10::int[], $11::int[], $12::text[])
     AS u(user_hash, day, interactions, tokens_in, tokens_out, latency_ms_sum, latency_hist, models,
          topics, feedback_count, rating_sum, ratings)
ON CONFLICT (user_hash, day) DO UPDATE SET
    interactions = a.interactions + EXCLUDED.interactions,
    tokens_in = a.tokens_in + EXCLUDED.tokens_in,
    tokens_out = a.tokens_out + EXCLUDED.tokens_out,
    latency_ms_sum = a.latency_ms_sum + EXCLUDED.latency_ms_sum,
    latency_hist = count_map_add(a.latency_hist, EXCLUDED.latency_hist),
    models = count_map_add(a.models, EXCLUDED.models),
    topics = count_map_add(a.topics, EXCLUDED.topics),
    feedback_count = a.feedback_count + EXCLUDED.feedback_count,
    rating_sum = a.rating_sum + EXCLUDED.rating_sum,
    ratings = count_map_add(a.ratings, EXCLUDED.ratings)
"""

UPSERT_SYSTEM = """
INSERT INTO system_metrics AS m
    (minute, route, method, requests, errors, client_errors, errors_by_type, latency_sum_ms,
     latency_min_ms, latency_max_ms, latency_hist)
SELECT u.minute, u.route, u.method, u.requests, u.errors, u.client_errors, u.errors_by_type::jsonb,
       u.latency_sum_ms, u.latency_min_ms, u.latency_max_ms, u.latency_hist::jsonb
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::text[], $8::float8[], $9::float8[], $10::float8[], $11::text[])
     AS u(minute, route, method, requests, errors, client_errors, errors_by_type, latency_sum_ms,
          latency_min_ms, latency_max_ms, latency_hist)
ON CONFLICT (minute, route, method) DO UPDATE SET
    requests = m.requests + EXCLUDED.requests,
    errors = m.errors + EXCLUDED.errors,
    client_errors = m.client_errors + EXCLUDED.client_errors,
    errors_by_type = count_map_add(m.errors_by_type, EXCLUDED.errors_by_type),
    latency_sum_ms = m.latency_sum_ms + EXCLUDED.latency_sum_ms,
    latency_min_ms = least(m.latency_min_ms, EXCLUDED.latency_min_ms),
    latency_max_ms = greatest(m.latency_max_ms, EXCLUDED.latency_max_ms),
    latency_hist = count_map_add(m.latency_hist, EXCLUDED.latency_hist)
"""

UPSERT_SUMMARY = """
INSERT INTO hourly_analytics_summary AS s
    (hour, events, events_by_type, active_users, sessions, study_seconds, materials_viewed,
     materials_completed, xp, ai_interactions, api_requests, api_errors)
SELECT u.hour, u.events, u.events_by_type::jsonb, u.active_users, u.sessions, u.study_seconds,
       u.materials_viewed, u.materials_completed, u.xp, u.ai_interactions, u.api_requests, u.api_errors
FROM unnest($1::timestamptz[], $2::bigint[], $3::text[], $4::int[], $5::int[], $6::float8[], $7::int[],
            $8::int[], $9::bigint[], $10::int[], $11::bigint[], $12::bigint[])
     AS u(hour, events, events_by_type, active_users, sessions, study_seconds, materials_viewed,
          materials_completed, xp, ai_interactions, api_requests, api_errors)
ON CONFLICT (hour) DO UPDATE SET
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


STAGING_TABLE = "aggregator_staging_events"
CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    event_id uuid, occurred_at timestamptz, event_type text, user_hash text, session_id uuid, properties text
) ON COMMIT DELETE ROWS
"""
STAGING_COLUMNS = ["event_id", "occurred_at", "event_type", "user_hash", "session_id", "properties"]
INSERT_FROM_STAGING = f"""
INSERT INTO analytics_events (event_id, occurred_at, event_type, user_hash, session_id, properties)
SELECT event_id, occurred_at, event_type, user_hash, session_id, properties::jsonb FROM {STAGING_TABLE}
ON CONFLICT DO NOTHING
RETURNING event_id
"""
COPY_THRESHOLD = 200
"""From this many rows on, raw rows travel by binary COPY into a temporary staging table."""


async def insert_events(conn: asyncpg.Connection, rows: Sequence[EventRow]) -> list[EventRow]:
    """Insert raw events idempotently; returns the rows that were new.

    ``rows`` must not repeat an event id (see :func:`unique_events`) and should be sorted by
    event id, so that two aggregators racing on the same events lock them in the same order.
    Large batches are copied (binary COPY, the cheapest way in) into a per-session temporary
    table that empties itself at commit, then moved with one ``INSERT ... ON CONFLICT DO
    NOTHING``; small ones go as arrays through ``unnest``.
    """
    if not rows:
        return []
    if len(rows) >= COPY_THRESHOLD:
        await conn.execute(CREATE_STAGING)
        await conn.copy_records_to_table(
            STAGING_TABLE,
            records=[
                (r.event_id, r.occurred_at, r.event_type, r.user_hash, r.session_id, dumps_json(r.properties))
                for r in rows
            ],
            columns=STAGING_COLUMNS,
        )
        inserted = await conn.fetch(INSERT_FROM_STAGING)
    else:
        inserted = await conn.fetch(
            INSERT_EVENTS,
            [r.event_id for r in rows],
            [r.occurred_at for r in rows],
            [r.event_type for r in rows],
            [r.user_hash for r in rows],
            [r.session_id for r in rows],
            [dumps_json(r.properties) for r in rows],
        )
    if len(inserted) == len(rows):
        return list(rows)
    new_ids = {record[0] for record in inserted}
    return [r for r in rows if r.event_id in new_ids]


def unique_events(rows: Sequence[EventRow]) -> list[EventRow]:
    """``rows`` without repeated event ids, sorted by event id (a stable lock order)."""
    by_id = {row.event_id.int: row for row in rows}
    return [by_id[k] for k in sorted(by_id)]


# --- pure aggregation (no I/O), testable on its own -----------------------------------------------


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def split_interval(end: datetime, seconds: float, step: timedelta) -> Iterator[tuple[datetime, float]]:
    """Split the ``seconds`` ending at ``end`` over UTC periods of length ``step`` (hour or day).

    Yields ``(period start, seconds in that period)``; the parts add up to ``seconds``.
    """
    if seconds <= 0:
        return
    start = end - timedelta(seconds=seconds)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    period = epoch + ((start - epoch) // step) * step
    remaining = seconds
    while remaining > 0:
        period_end = period + step
        part = min((period_end - max(start, period)).total_seconds(), remaining)
        if period_end >= end:
            part = remaining  # the last part takes the rounding rest: parts sum exactly
        yield period, part
        remaining -= part
        period = period_end


@dataclass
class _Gamification:
    xp: int = 0
    level: int = 1
    achievements: set[str] = field(default_factory=set)
    streak: int | None = None
    longest: int = 0
    streak_key: tuple[datetime, Any] | None = None
    last_at: datetime | None = None


@dataclass
class _Ai:
    interactions: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms_sum: float = 0.0
    latency_hist: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)
    feedback_count: int = 0
    rating_sum: int = 0
    ratings: dict[str, int] = field(default_factory=dict)


@dataclass
class _System:
    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    latency_sum_ms: float = 0.0
    latency_min_ms: float = float("inf")
    latency_max_ms: float = 0.0
    latency_hist: dict[str, int] = field(default_factory=dict)


_DAILY = ("sessions", "study_seconds", "viewed", "completed", "xp", "events")
_HOURLY = ("events", "sessions", "study_seconds", "viewed", "completed", "xp", "ai")
_SUMMARY = ("events", "sessions", "study_seconds", "viewed", "completed", "xp", "ai", "api", "api_errors")


def _count(table: dict[str, int], key: str, amount: int = 1) -> None:
    table[key] = table.get(key, 0) + amount


@dataclass
class Deltas:
    """What one batch of new events adds to each rollup (computed without I/O)."""

    starts: list[EventRow] = field(default_factory=list)
    ends: list[EventRow] = field(default_factory=list)
    daily: dict[tuple[str, date], dict[str, float]] = field(default_factory=dict)
    hourly: dict[tuple[str, datetime], dict[str, float]] = field(default_factory=dict)
    gamification: dict[str, _Gamification] = field(default_factory=dict)
    ai: dict[tuple[str, date], _Ai] = field(default_factory=dict)
    system: dict[tuple[datetime, str, str], _System] = field(default_factory=dict)
    summary: dict[datetime, dict[str, float]] = field(default_factory=dict)
    summary_types: dict[datetime, dict[str, int]] = field(default_factory=dict)

    def _acc(self, table: dict[Any, dict[str, float]], key: Any, names: tuple[str, ...]) -> dict[str, float]:
        acc = table.get(key)
        if acc is None:
            acc = table[key] = dict.fromkeys(names, 0)
        return acc


def compute(rows: Sequence[EventRow]) -> Deltas:
    """Aggregate newly inserted events into per-rollup deltas."""
    d = Deltas()
    for row in rows:
        kind = row.event_type
        props = row.properties
        at = row.occurred_at
        hour = _hour(at)
        summary = d._acc(d.summary, hour, _SUMMARY)
        summary["events"] += 1
        _count(d.summary_types.setdefault(hour, {}), kind)
        if kind == API_REQUEST:
            key = (_minute(at), str(props.get("route")), str(props.get("method", "_OTHER")))
            sysm = d.system.get(key)
            if sysm is None:
                sysm = d.system[key] = _System()
            duration = float(props.get("duration_ms", 0.0))
            sysm.requests += 1
            sysm.latency_sum_ms += duration
            sysm.latency_min_ms = min(sysm.latency_min_ms, duration)
            sysm.latency_max_ms = max(sysm.latency_max_ms, duration)
            histogram.add(sysm.latency_hist, duration)
            status = int(props.get("status_code", 0) or 0)
            error_type = props.get("error_type")
            summary["api"] += 1
            if error_type is not None:
                sysm.errors += 1
                summary["api_errors"] += 1
                _count(sysm.errors_by_type, str(error_type))
            elif 400 <= status < 500:
                sysm.client_errors += 1
        user = row.user_hash
        if user is None:
            continue
        day = at.date()
        daily = d._acc(d.daily, (user, day), _DAILY)
        hourly = d._acc(d.hourly, (user, hour), _HOURLY)
        daily["events"] += 1
        hourly["events"] += 1
        game = d.gamification.get(user)
        if game is None:
            game = d.gamification[user] = _Gamification()
        if game.last_at is None or at > game.last_at:
            game.last_at = at
        if kind == "session_start" and row.session_id is not None:
            d.starts.append(row)
            daily["sessions"] += 1
            hourly["sessions"] += 1
            summary["sessions"] += 1
        elif kind == "session_end" and row.session_id is not None:
            d.ends.append(row)
            seconds = float(props.get("duration_s", 0.0))
            for period, part in split_interval(at, seconds, timedelta(days=1)):
                d._acc(d.daily, (user, period.date()), _DAILY)["study_seconds"] += part
            for period, part in split_interval(at, seconds, timedelta(hours=1)):
                d._acc(d.hourly, (user, period), _HOURLY)["study_seconds"] += part
                d._acc(d.summary, period, _SUMMARY)["study_seconds"] += part
        elif kind == "material_view":
            daily["viewed"] += 1
            hourly["viewed"] += 1
            summary["viewed"] += 1
        elif kind == "material_complete":
            daily["completed"] += 1
            hourly["completed"] += 1
            summary["completed"] += 1
        elif kind == "xp_awarded":
            amount = int(props.get("xp_amount", 0))
            daily["xp"] += amount
            hourly["xp"] += amount
            summary["xp"] += amount
            game.xp += amount
        elif kind == "level_up":
            game.level = max(game.level, int(props.get("level", 1)))
        elif kind == "achievement_unlocked":
            game.achievements.add(str(props.get("achievement_id")))
        elif kind in ("streak_updated", "streak_broken"):
            if kind == "streak_updated":
                value = int(props.get("streak_days", 0))
                game.longest = max(game.longest, value)
            else:
                value = 0
                game.longest = max(game.longest, int(props.get("previous_streak_days", 0)))
            streak_key = (at, row.event_id)
            if game.streak_key is None or streak_key > game.streak_key:
                game.streak_key = streak_key
                game.streak = value
        elif kind == "ai_coach_interaction":
            ai = d.ai.get((user, day))
            if ai is None:
                ai = d.ai[(user, day)] = _Ai()
            latency = float(props.get("latency_ms", 0.0))
            ai.interactions += 1
            ai.tokens_in += int(props.get("tokens_in", 0))
            ai.tokens_out += int(props.get("tokens_out", 0))
            ai.latency_ms_sum += latency
            histogram.add(ai.latency_hist, latency)
            _count(ai.models, str(props.get("model")))
            _count(ai.topics, str(props.get("topic_category")))
            hourly["ai"] += 1
            summary["ai"] += 1
        elif kind == "ai_coach_feedback":
            ai = d.ai.get((user, day))
            if ai is None:
                ai = d.ai[(user, day)] = _Ai()
            rating = int(props.get("rating", 0))
            ai.feedback_count += 1
            ai.rating_sum += rating
            _count(ai.ratings, str(rating))
    return d


async def apply(conn: asyncpg.Connection, rows: Sequence[EventRow]) -> None:
    """Update every rollup from newly inserted events (inside the batch transaction)."""
    if rows:
        await apply_deltas(conn, compute(rows))


async def apply_deltas(conn: asyncpg.Connection, d: Deltas) -> None:
    if d.starts:
        starts = sorted(d.starts, key=lambda r: r.session_id or 0)
        await conn.execute(
            UPSERT_SESSION_STARTS,
            [r.session_id for r in starts],
            [r.user_hash for r in starts],
            [r.occurred_at for r in starts],
        )
    if d.ends:
        ends = sorted(d.ends, key=lambda r: r.session_id or 0)
        await conn.execute(
            UPSERT_SESSION_ENDS,
            [r.session_id for r in ends],
            [r.user_hash for r in ends],
            [r.occurred_at for r in ends],
            [float(r.properties.get("duration_s", 0.0)) for r in ends],
            [int(r.properties.get("xp_earned", 0)) for r in ends],
            [dumps_json(list(r.properties.get("materials_touched", []))) for r in ends],
            [str(r.properties.get("end_reason", "completed")) for r in ends],
        )
    if d.daily:
        keys = sorted(d.daily)
        await conn.execute(
            UPSERT_DAILY,
            [k[0] for k in keys],
            [k[1] for k in keys],
            *([d.daily[k][name] for k in keys] for name in _DAILY),
        )
    if d.gamification:
        users = sorted(d.gamification)
        games = [d.gamification[u] for u in users]
        await conn.execute(
            UPSERT_GAMIFICATION,
            users,
            [g.xp for g in games],
            [g.level for g in games],
            [dumps_json(sorted(g.achievements)) for g in games],
            [g.streak for g in games],
            [g.longest for g in games],
            [g.streak_key[0] if g.streak_key else None for g in games],
            [g.streak_key[1] if g.streak_key else None for g in games],
            [g.last_at for g in games],
        )
    if d.ai:
        ai_keys = sorted(d.ai)
        ais = [d.ai[k] for k in ai_keys]
        await conn.execute(
            UPSERT_AI,
            [k[0] for k in ai_keys],
            [k[1] for k in ai_keys],
            [a.interactions for a in ais],
            [a.tokens_in for a in ais],
            [a.tokens_out for a in ais],
            [a.latency_ms_sum for a in ais],
            [dumps_json(a.latency_hist) for a in ais],
            [dumps_json(a.models) for a in ais],
            [dumps_json(a.topics) for a in ais],
            [a.feedback_count for a in ais],
            [a.rating_sum for a in ais],
            [dumps_json(a.ratings) for a in ais],
        )
    if d.system:
        sys_keys = sorted(d.system)
        systems = [d.system[k] for k in sys_keys]
        await conn.execute(
            UPSERT_SYSTEM,
            [k[0] for k in sys_keys],
            [k[1] for k in sys_keys],
            [k[2] for k in sys_keys],
            [s.requests for s in systems],
            [s.errors for s in systems],
            [s.client_errors for s in systems],
            [dumps_json(s.errors_by_type) for s in systems],
            [s.latency_sum_ms for s in systems],
            [s.latency_min_ms for s in systems],
            [s.latency_max_ms for s in systems],
            [dumps_json(s.latency_hist) for s in systems],
        )
    new_user_hours: dict[datetime, int] = defaultdict(int)
    if d.hourly:
        hour_keys = sorted(d.hourly)
        records = await conn.fetch(
            UPSERT_HOURLY_USER,
            [k[0] for k in hour_keys],
            [k[1] for k in hour_keys],
            *([d.hourly[k][name] for k in hour_keys] for name in _HOURLY),
        )
        for record in records:
            if record["inserted"]:
                new_user_hours[record["hour"]] += 1
    hours = sorted(set(d.summary) | set(new_user_hours))
    if hours:
        empty: dict[str, float] = dict.fromkeys(_SUMMARY, 0)
        sums = [d.summary.get(h, empty) for h in hours]
        await conn.execute(
            UPSERT_SUMMARY,
            hours,
            [s["events"] for s in sums],
            [dumps_json(d.summary_types.get(h, {})) for h in hours],
            [new_user_hours.get(h, 0) for h in hours],
            [s["sessions"] for s in sums],
            [s["study_seconds"] for s in sums],
            [s["viewed"] for s in sums],
            [s["completed"] for s in sums],
            [s["xp"] for s in sums],
            [s["ai"] for s in sums],
            [s["api"] for s in sums],
            [s["api_errors"] for s in sums],
        )
