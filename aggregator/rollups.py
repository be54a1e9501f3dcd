"""Rollups: how newly inserted events change the analytics tables, computed in PostgreSQL.

One batch (its duplicates removed in Python) travels by binary ``COPY`` into a per-connection
temporary table of new events. Events already stored (redelivered entries, re-exported spans)
are deleted from it by primary-key probes, and what is left goes into ``analytics_events`` with
a plain ``INSERT``; every rollup is then one set-based ``INSERT ... SELECT ... GROUP BY ... ON
CONFLICT DO UPDATE`` over those new rows only. Python never aggregates per event, so every
rollup moves exactly once per event, whatever the bus redelivers. The temporary table empties
itself at commit.

Two members may insert the same event at the same moment (a claimed entry still being
processed by its first reader): the second ``INSERT`` then waits for the first transaction and
fails with a unique violation. The caller rolls back and runs the batch again with
``racing=True``, where the raw insert is ``ON CONFLICT DO NOTHING RETURNING`` and the rows it
did not return are deleted before the rollups: slower (~0.3 s per 100k events), always right.

Every update commutes (sums, maxima, set unions, last-writer-wins on ``(time, event_id)``),
so batches may be applied in any order by any number of aggregators. To keep concurrent
aggregators free of deadlocks, every statement touches its keys in sorted order (``ORDER BY``
the conflict key) and the tables are always updated in the same order, one statement after
the other; the one-row-per-hour dashboard summary, the hottest row, comes last so its lock is
held only until the commit.

Semantics (mirrored by the independent ground truth in ``tests/aggregator/workload.py``):
counts per user need a ``user_hash``; a session's study time (``duration_s`` of its
``session_end``) is split over the UTC days and hours it covered; latency histograms use the
buckets of :mod:`.histogram` (same libm ``log`` on both sides, constants passed from Python).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from . import histogram

NEW_TABLE = "aggregator_new_events"
STAGING_COLUMNS = ("event_id", "occurred_at", "event_type", "user_hash", "session_id", "properties")

SESSION_WORK_MEM = "64MB"
"""Sorts and hash aggregates of a 25k-event batch stay in memory (the 4 MB default spills the
event-id sort and some GROUP BYs to disk). Session setting of the aggregator's connections."""

CREATE_TEMP_TABLES = f"""
SET work_mem = '{SESSION_WORK_MEM}';
CREATE TEMP TABLE IF NOT EXISTS {NEW_TABLE} (
    event_id uuid, occurred_at timestamptz, event_type text, user_hash text, session_id uuid,
    properties jsonb,
    hour timestamptz
        GENERATED ALWAYS AS (date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') STORED,
    day date GENERATED ALWAYS AS ((occurred_at AT TIME ZONE 'UTC')::date) STORED
) ON COMMIT DELETE ROWS;
"""
"""Run once per connection (the aggregator pool's ``init``); temporary tables live as long as it."""

DELETE_STORED = f"""
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
DELETE FROM {NEW_TABLE} AS n USING analytics_events AS e
WHERE e.event_id = n.event_id AND e.occurred_at = n.occurred_at;
SET LOCAL enable_hashjoin = on;
SET LOCAL enable_mergejoin = on
"""
"""Events of the batch that are stored already leave it: one primary-key probe per event (the join
is forced to a nested loop: a hash or merge join would read whole day partitions)."""

INSERT_NEW = f"""
INSERT INTO analytics_events (event_id, occurred_at, event_type, user_hash, session_id, properties)
SELECT event_id, occurred_at, event_type, user_hash, session_id, properties FROM {NEW_TABLE}
ORDER BY event_id
"""

INSERT_NEW_RACING = f"""
WITH inserted AS (
    INSERT INTO analytics_events (event_id, occurred_at, event_type, user_hash, session_id, properties)
    SELECT event_id, occurred_at, event_type, user_hash, session_id, properties FROM {NEW_TABLE}
    ORDER BY event_id
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
DELETE FROM {NEW_TABLE} AS n WHERE NOT EXISTS (SELECT 1 FROM inserted AS i WHERE i.event_id = n.event_id)
"""
"""The insert when another member may be inserting the same events: keep only what this one inserted."""


def _int(key: str, default: int = 0) -> str:
    """SQL for Python's ``int(properties.get(key, default))`` (truncates like ``int``)."""
    return f"coalesce(trunc((properties->>'{key}')::numeric), {default})"


def _float(key: str) -> str:
    """SQL for Python's ``float(properties.get(key, 0.0))``."""
    return f"coalesce((properties->>'{key}')::float8, 0)"


def _bucket(value: str) -> str:
    """SQL twin of :func:`histogram.bucket` (``ceil(ln x / ln gamma)``, same constants)."""
    return (
        f"CASE WHEN {value} <= {histogram.MIN_VALUE!r}::float8 THEN {histogram.MIN_KEY} "
        f"ELSE ceil(ln({value}) / {histogram.LOG_GAMMA!r}::float8)::int END"
    )


def _merge(stored: str, added: str) -> str:
    """``count_map_add`` of two count maps, skipped (a function call per row) when nothing is added."""
    return f"CASE WHEN {added} = '{{}}'::jsonb THEN {stored} ELSE count_map_add({stored}, {added}) END"


_USER = "user_hash IS NOT NULL"
_IS_START = "event_type = 'session_start' AND session_id IS NOT NULL"
_IS_END = "event_type = 'session_end' AND session_id IS NOT NULL"


def _study(period: str, unit: str, key_expr: str) -> str:
    """Rows (user_hash, key, secs): study time of new session ends split over UTC periods."""
    return f"""
    SELECT user_hash, {key_expr} AS key,
           extract(epoch FROM least(p + interval '{period}', end_at) - greatest(start_at, p))::float8 AS secs
    FROM (
        SELECT user_hash, occurred_at AS end_at, occurred_at - make_interval(secs => s) AS start_at
        FROM (SELECT user_hash, occurred_at, {_float("duration_s")} AS s
              FROM {NEW_TABLE} WHERE {_USER} AND {_IS_END}) AS e
        WHERE s > 0
    ) AS st,
    generate_series(date_trunc('{unit}', start_at, 'UTC'), end_at - interval '1 microsecond',
                    interval '{period}') AS p
    """


UPSERT_SESSION_STARTS = f"""
INSERT INTO learning_sessions (session_id, user_hash, started_at)
SELECT DISTINCT ON (session_id) session_id, user_hash, occurred_at
FROM {NEW_TABLE} WHERE {_USER} AND {_IS_START}
ORDER BY session_id, occurred_at DESC, event_id DESC
ON CONFLICT (session_id) DO UPDATE SET started_at = EXCLUDED.started_at
"""

UPSERT_SESSION_ENDS = f"""
INSERT INTO learning_sessions
    (session_id, user_hash, ended_at, duration_s, xp_earned, materials_touched, end_reason)
SELECT DISTINCT ON (session_id) session_id, user_hash, occurred_at, {_float("duration_s")},
       {_int("xp_earned")},
       CASE WHEN jsonb_typeof(properties->'materials_touched') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(properties->'materials_touched'))
            ELSE '{{}}'::text[] END,
       coalesce(properties->>'end_reason', 'completed')
FROM {NEW_TABLE} WHERE {_USER} AND {_IS_END}
ORDER BY session_id, occurred_at DESC, event_id DESC
ON CONFLICT (session_id) DO UPDATE SET
    ended_at = EXCLUDED.ended_at,
    duration_s = EXCLUDED.duration_s,
    xp_earned = EXCLUDED.xp_earned,
    materials_touched = EXCLUDED.materials_touched,
    end_reason = EXCLUDED.end_reason
"""

UPSERT_DAILY = f"""
INSERT INTO daily_activity_summary AS d
    (user_hash, day, sessions, study_seconds, materials_viewed, materials_completed, xp, events)
SELECT user_hash, key, sum(sessions), sum(secs), sum(viewed), sum(completed), sum(xp), sum(events)
FROM (
    SELECT user_hash, day AS key, ({_IS_START})::int AS sessions, 0::float8 AS secs,
           (event_type = 'material_view')::int AS viewed,
           (event_type = 'material_complete')::int AS completed,
           CASE WHEN event_type = 'xp_awarded' THEN {_int("xp_amount")} ELSE 0 END AS xp,
           1 AS events
    FROM {NEW_TABLE} WHERE {_USER}
    UNION ALL
    SELECT user_hash, key, 0, secs, 0, 0, 0, 0
    FROM ({_study("24 hours", "day", "(p AT TIME ZONE 'UTC')::date")}) AS s
) AS u
GROUP BY user_hash, key
ORDER BY user_hash, key
ON CONFLICT (user_hash, day) DO UPDATE SET
    sessions = d.sessions + EXCLUDED.sessions,
    study_seconds = d.study_seconds + EXCLUDED.study_seconds,
    materials_viewed = d.materials_viewed + EXCLUDED.materials_viewed,
    materials_completed = d.materials_completed + EXCLUDED.materials_completed,
    xp = d.xp + EXCLUDED.xp,
    events = d.events + EXCLUDED.events
"""

_STREAK = "event_type IN ('streak_updated', 'streak_broken')"
_STREAK_ORDER = "ORDER BY occurred_at DESC, event_id DESC"

UPSERT_GAMIFICATION = f"""
INSERT INTO gamification_stats AS g
    (user_hash, xp_total, level, achievements, current_streak, longest_streak, streak_as_of,
     streak_event_id, last_activity_at)
SELECT user_hash,
       coalesce(sum({_int("xp_amount")}) FILTER (WHERE event_type = 'xp_awarded'), 0),
       greatest(1, max({_int("level", 1)}) FILTER (WHERE event_type = 'level_up')),
       coalesce(array_agg(DISTINCT coalesce(properties->>'achievement_id', 'None'))
                FILTER (WHERE event_type = 'achievement_unlocked'), '{{}}'),
       coalesce((array_agg(CASE WHEN event_type = 'streak_updated' THEN {_int("streak_days")} ELSE 0 END
                           {_STREAK_ORDER}) FILTER (WHERE {_STREAK}))[1], 0),
       greatest(0, max(CASE WHEN event_type = 'streak_updated' THEN {_int("streak_days")}
                            ELSE {_int("previous_streak_days")} END) FILTER (WHERE {_STREAK})),
       (array_agg(occurred_at {_STREAK_ORDER}) FILTER (WHERE {_STREAK}))[1],
       (array_agg(event_id {_STREAK_ORDER}) FILTER (WHERE {_STREAK}))[1],
       max(occurred_at)
FROM {NEW_TABLE} WHERE {_USER}
GROUP BY user_hash
ORDER BY user_hash
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

UPSERT_AI = f"""
WITH ai AS (
    SELECT user_hash, day, event_type = 'ai_coach_interaction' AS asked,
           {_float("latency_ms")} AS latency, {_int("tokens_in")} AS tokens_in,
           {_int("tokens_out")} AS tokens_out,
           coalesce(properties->>'model', 'None') AS model,
           coalesce(properties->>'topic_category', 'None') AS topic,
           {_int("rating")} AS rating
    FROM {NEW_TABLE}
    WHERE {_USER} AND event_type IN ('ai_coach_interaction', 'ai_coach_feedback')
), maps AS (
    SELECT user_hash, day,
           jsonb_object_agg(k, n) FILTER (WHERE m = 'h') AS hist,
           jsonb_object_agg(k, n) FILTER (WHERE m = 'm') AS models,
           jsonb_object_agg(k, n) FILTER (WHERE m = 't') AS topics,
           jsonb_object_agg(k, n) FILTER (WHERE m = 'r') AS ratings
    FROM (
        SELECT user_hash, day, 'h' AS m, ({_bucket("latency")})::text AS k, count(*) AS n
        FROM ai WHERE asked GROUP BY 1, 2, 4
        UNION ALL
        SELECT user_hash, day, 'm', model, count(*) FROM ai WHERE asked GROUP BY 1, 2, 4
        UNION ALL
        SELECT user_hash, day, 't', topic, count(*) FROM ai WHERE asked GROUP BY 1, 2, 4
        UNION ALL
        SELECT user_hash, day, 'r', rating::text, count(*) FROM ai WHERE NOT asked GROUP BY 1, 2, 4
    ) AS c
    GROUP BY user_hash, day
)
INSERT INTO ai_coach_metrics AS a
    (user_hash, day, interactions, tokens_in, tokens_out, latency_ms_sum, latency_hist, models, topics,
     feedback_count, rating_sum, ratings)
SELECT s.user_hash, s.day, s.interactions, s.tokens_in, s.tokens_out, s.latency_ms_sum,
       coalesce(m.hist, '{{}}'), coalesce(m.models, '{{}}'), coalesce(m.topics, '{{}}'),
       s.feedback_count, s.rating_sum, coalesce(m.ratings, '{{}}')
FROM (
    SELECT user_hash, day, count(*) FILTER (WHERE asked) AS interactions,
           coalesce(sum(tokens_in) FILTER (WHERE asked), 0) AS tokens_in,
           coalesce(sum(tokens_out) FILTER (WHERE asked), 0) AS tokens_out,
           coalesce(sum(latency) FILTER (WHERE asked), 0) AS latency_ms_sum,
           count(*) FILTER (WHERE NOT asked) AS feedback_count,
           coalesce(sum(rating) FILTER (WHERE NOT asked), 0) AS rating_sum
    FROM ai GROUP BY user_hash, day
) AS s JOIN maps AS m USING (user_hash, day)
ORDER BY s.user_hash, s.day
ON CONFLICT (user_hash, day) DO UPDATE SET
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

UPSERT_SYSTEM = f"""
WITH api AS (
    SELECT date_trunc('minute', occurred_at, 'UTC') AS minute,
           coalesce(properties->>'route', 'None') AS route,
           coalesce(properties->>'method', '_OTHER') AS method,
           {_float("duration_ms")} AS duration,
           {_int("status_code")} AS status,
           properties->>'error_type' AS error_type
    FROM {NEW_TABLE} WHERE event_type = 'api_request'
), maps AS (
    SELECT minute, route, method,
           jsonb_object_agg(k, n) FILTER (WHERE m = 'h') AS hist,
           jsonb_object_agg(k, n) FILTER (WHERE m = 'e') AS errors
    FROM (
        SELECT minute, route, method, 'h' AS m, ({_bucket("duration")})::text AS k, count(*) AS n
        FROM api GROUP BY 1, 2, 3, 5
        UNION ALL
        SELECT minute, route, method, 'e', error_type, count(*)
        FROM api WHERE error_type IS NOT NULL GROUP BY 1, 2, 3, 5
    ) AS c
    GROUP BY minute, route, method
)
INSERT INTO system_metrics AS m
    (minute, route, method, requests, errors, client_errors, errors_by_type, latency_sum_ms,
     latency_min_ms, latency_max_ms, latency_hist)
SELECT s.minute, s.route, s.method, s.requests, s.errors, s.client_errors, coalesce(m.errors, '{{}}'),
       s.latency_sum_ms, s.latency_min_ms, s.latency_max_ms, coalesce(m.hist, '{{}}')
FROM (
    SELECT minute, route, method, count(*) AS requests,
           count(*) FILTER (WHERE error_type IS NOT NULL) AS errors,
           count(*) FILTER (WHERE error_type IS NULL AND status >= 400 AND status < 500) AS client_errors,
           sum(duration) AS latency_sum_ms, min(duration) AS latency_min_ms,
           greatest(0, max(duration)) AS latency_max_ms
    FROM api GROUP BY minute, route, method
) AS s JOIN maps AS m USING (minute, route, method)
ORDER BY s.minute, s.route, s.method
ON CONFLICT (minute, route, method) DO UPDATE SET
    requests = m.requests + EXCLUDED.requests,
    errors = m.errors + EXCLUDED.errors,
    client_errors = m.client_errors + EXCLUDED.client_errors,
    errors_by_type = {_merge("m.errors_by_type", "EXCLUDED.errors_by_type")},
    latency_sum_ms = m.latency_sum_ms + EXCLUDED.latency_sum_ms,
    latency_min_ms = least(m.latency_min_ms, EXCLUDED.latency_min_ms),
    latency_max_ms = greatest(m.latency_max_ms, EXCLUDED.latency_max_ms),
    latency_hist = {_merge("m.latency_hist", "EXCLUDED.latency_hist")}
"""

UPSERT_HOURLY_AND_SUMMARY = f"""
WITH hourly AS (
    INSERT INTO user_activity_hourly AS h
        (user_hash, hour, events, sessions, study_seconds, materials_viewed, materials_completed, xp,
         ai_interactions)
    SELECT user_hash, key, sum(events), sum(sessions), sum(secs), sum(viewed), sum(completed), sum(xp),
           sum(ai)
    FROM (
        SELECT user_hash, hour AS key, 1 AS events, ({_IS_START})::int AS sessions, 0::float8 AS secs,
               (event_type = 'material_view')::int AS viewed,
               (event_type = 'material_complete')::int AS completed,
               CASE WHEN event_type = 'xp_awarded' THEN {_int("xp_amount")} ELSE 0 END AS xp,
               (event_type = 'ai_coach_interaction')::int AS ai
        FROM {NEW_TABLE} WHERE {_USER}
        UNION ALL
        SELECT user_hash, key, 0, 0, secs, 0, 0, 0, 0 FROM ({_study("1 hour", "hour", "p")}) AS s
    ) AS u
    GROUP BY user_hash, key
    ORDER BY user_hash, key
    ON CONFLICT (user_hash, hour) DO UPDATE SET
        events = h.events + EXCLUDED.events,
        sessions = h.sessions + EXCLUDED.sessions,
        study_seconds = h.study_seconds + EXCLUDED.study_seconds,
        materials_viewed = h.materials_viewed + EXCLUDED.materials_viewed,
        materials_completed = h.materials_completed + EXCLUDED.materials_completed,
        xp = h.xp + EXCLUDED.xp,
        ai_interactions = h.ai_interactions + EXCLUDED.ai_interactions
    RETURNING hour, (xmax = 0) AS created
), active AS (
    -- (user, hour) rows this batch created are exactly the learners new in that hour.
    SELECT hour, count(*) FILTER (WHERE created) AS users FROM hourly GROUP BY hour
), types AS (
    SELECT hour, jsonb_object_agg(event_type, n) AS by_type
    FROM (SELECT hour, event_type, count(*) AS n FROM {NEW_TABLE} GROUP BY 1, 2) AS t
    GROUP BY hour
), totals AS (
    SELECT key AS hour, sum(events) AS events, sum(sessions) AS sessions, sum(secs) AS secs,
           sum(viewed) AS viewed, sum(completed) AS completed, sum(xp) AS xp, sum(ai) AS ai,
           sum(api) AS api, sum(api_errors) AS api_errors
    FROM (
        SELECT hour AS key, 1 AS events,
               ({_USER} AND {_IS_START})::int AS sessions, 0::float8 AS secs,
               ({_USER} AND event_type = 'material_view')::int AS viewed,
               ({_USER} AND event_type = 'material_complete')::int AS completed,
               CASE WHEN {_USER} AND event_type = 'xp_awarded' THEN {_int("xp_amount")} ELSE 0 END AS xp,
               ({_USER} AND event_type = 'ai_coach_interaction')::int AS ai,
               (event_type = 'api_request')::int AS api,
               (event_type = 'api_request' AND properties->>'error_type' IS NOT NULL)::int AS api_errors
        FROM {NEW_TABLE}
        UNION ALL
        SELECT key, 0, 0, secs, 0, 0, 0, 0, 0, 0 FROM ({_study("1 hour", "hour", "p")}) AS s
    ) AS u
    GROUP BY key
)
INSERT INTO hourly_analytics_summary AS s
    (hour, events, events_by_type, active_users, sessions, study_seconds, materials_viewed,
     materials_completed, xp, ai_interactions, api_requests, api_errors)
SELECT t.hour, t.events, coalesce(y.by_type, '{{}}'), coalesce(a.users, 0), t.sessions, t.secs, t.viewed,
       t.completed, t.xp, t.ai, t.api, t.api_errors
FROM totals AS t LEFT JOIN types AS y USING (hour) LEFT JOIN active AS a USING (hour)
ORDER BY t.hour
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
# Every hour with a (user, hour) row of this batch also has events or study time of this batch,
# so ``totals`` holds every hour of ``active``: the LEFT JOIN loses nothing.

ROLLUP_STATEMENTS = (
    UPSERT_SESSION_STARTS,
    UPSERT_SESSION_ENDS,
    UPSERT_DAILY,
    UPSERT_GAMIFICATION,
    UPSERT_AI,
    UPSERT_SYSTEM,
    UPSERT_HOURLY_AND_SUMMARY,  # the hottest row last
)
"""In this order, always: a fixed table order keeps concurrent aggregators free of deadlocks."""

PREPARED_MAX_ROWS = 2_000
"""Batches up to this size run the rollups as prepared statements (planned once per connection,
on a small batch); larger ones as one script planned for the batch at hand."""

ROLLUP_SCRIPT = ";\n".join(ROLLUP_STATEMENTS)
"""All rollups in one round trip (simple query protocol, executed in order, inside the batch
transaction). Small batches (the freshness case) are dominated by per-statement round trips,
large ones by execution: planning each statement anew also lets the planner see the batch's
real size, where a cached generic plan would keep the estimates of the first batch."""

StagingRecord = tuple[Any, ...]
"""``(event_id, occurred_at, event_type, user_hash, session_id, properties JSON text)``."""


async def create_temp_tables(conn: asyncpg.Connection) -> None:
    """Create this connection's staging table and set its ``work_mem`` (once per connection).

    Also gives ``jsonb`` back asyncpg's own codec (JSON text in, binary out), which the binary
    ``COPY`` needs; the aggregator never reads ``jsonb`` into Python.
    """
    await conn.reset_type_codec("jsonb", schema="pg_catalog")
    await conn.execute(CREATE_TEMP_TABLES)


async def insert_and_roll_up(
    conn: asyncpg.Connection, records: list[StagingRecord], *, racing: bool = False
) -> int:
    """Inside the batch transaction: insert raw events idempotently, roll up the new ones.

    Returns the number of events that were new. ``records`` may repeat events; ``conn`` must
    have the temporary table (:func:`create_temp_tables`). Raises
    ``asyncpg.UniqueViolationError`` when another transaction inserted one of the events
    meanwhile: roll back and call again with ``racing=True``.
    """
    if not records:
        return 0
    unique = list({record[0]: record for record in records}.values())  # one row per event id
    await conn.copy_records_to_table(NEW_TABLE, records=unique, columns=STAGING_COLUMNS)
    await conn.execute(DELETE_STORED)
    if racing:
        await conn.execute(INSERT_NEW_RACING)
        inserted: int = await conn.fetchval(f"SELECT count(*) FROM {NEW_TABLE}")
    else:
        inserted = int((await conn.execute(INSERT_NEW)).split()[-1])  # "INSERT 0 <rows>"
    if not inserted:
        return 0
    if len(records) <= PREPARED_MAX_ROWS:
        for statement in ROLLUP_STATEMENTS:
            await conn.fetch(statement)  # prepared once per connection: no planning per batch
    else:
        await conn.execute(ROLLUP_SCRIPT)
    return inserted
