"""The query API's SQL (rollup tables only, never raw events) and the learner reads they share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

from . import audit
from .auth import Principal
from .days import today
from .deps import audited_subject
from .params import OverviewParams

DAILY_SQL = """
SELECT day, sum(sessions)::int AS sessions, sum(study_seconds)::float8 AS study_seconds,
       sum(materials_viewed)::int AS materials_viewed,
       sum(materials_completed)::int AS materials_completed, sum(xp)::bigint AS xp
FROM daily_activity_summary
WHERE user_hash = ANY($1::text[]) AND day >= $2 AND day <= $3
GROUP BY day HAVING sum(events) > 0 OR sum(sessions) > 0 OR sum(study_seconds) > 0 ORDER BY day
"""
"""A day whose row holds nothing (a session's study time taken back, see aggregator/consumer/sessions.py)
is no day of activity."""

GAMIFICATION_SQL = """
SELECT coalesce(sum(xp_total), 0)::bigint AS xp_total, coalesce(max(level), 1) AS level,
       ARRAY(SELECT DISTINCT a FROM gamification_stats g2, unnest(g2.achievements) a
             WHERE g2.user_hash = ANY($1::text[]) ORDER BY a) AS achievements,
       (array_agg(current_streak ORDER BY streak_as_of DESC NULLS LAST))[1] AS current_streak,
       coalesce(max(longest_streak), 0) AS longest_streak,
       max(streak_as_of) AS streak_as_of, max(last_activity_at) AS last_activity_at
FROM gamification_stats
WHERE user_hash = ANY($1::text[])
"""

HEATMAP_SQL = """
SELECT (hour AT TIME ZONE $2)::date AS day, sum(study_seconds)::float8 AS study_seconds,
       sum(sessions)::int AS sessions, sum(events)::int AS events
FROM user_activity_hourly
WHERE user_hash = ANY($1::text[])
  AND hour >= ($3::date::timestamp AT TIME ZONE $2) AND hour < (($4::date + 1)::timestamp AT TIME ZONE $2)
GROUP BY 1
"""
"""The local days ``$3..$4`` in zone ``$2`` as UTC bounds, computed by PostgreSQL: its dates and
timestamps reach far beyond Python's on both sides, so any date the API accepts has bounds."""

ACTIVE_USERS_SQL = """
SELECT count(*)::int FROM gamification_stats WHERE last_activity_at >= $1 AND last_activity_at <= $2
"""
"""A learner was active in the window exactly when their last activity falls in it (the rollup
keeps the latest event time of every learner)."""

COHORT_SQL = """
SELECT (hour AT TIME ZONE 'UTC')::date AS day, max(active_users)::int AS peak,
       sum(sessions)::int AS sessions, sum(study_seconds)::float8 AS study_seconds,
       sum(materials_viewed)::int AS materials_viewed,
       sum(materials_completed)::int AS materials_completed, sum(xp)::bigint AS xp,
       sum(ai_interactions)::int AS ai_interactions
FROM hourly_analytics_summary
WHERE hour >= $1 AND hour < $2
GROUP BY 1 HAVING sum(events) > 0 OR sum(sessions) > 0 OR sum(study_seconds) > 0 ORDER BY 1
"""


@dataclass(frozen=True)
class LearnerWindow:
    hashes: tuple[str, ...]
    since: date
    until: date
    daily: list[asyncpg.Record]
    stats: asyncpg.Record


async def learner_window(
    db: asyncpg.Pool, caller: Principal, endpoint: str, params: OverviewParams
) -> LearnerWindow:
    """A learner's daily rollup over ``params.days`` and gamification state, the read audited."""
    hashes = await audited_subject(db, caller, endpoint, params.subject)
    until = today()
    since = until - timedelta(days=params.days - 1)
    async with db.acquire() as conn:
        daily = await conn.fetch(DAILY_SQL, list(hashes), since, until)
        stats = await conn.fetchrow(GAMIFICATION_SQL, list(hashes))
        await audit.record(conn, caller, endpoint, subject=hashes[0])
    assert stats is not None  # an aggregate query always returns one row
    return LearnerWindow(hashes, since, until, daily, stats)
