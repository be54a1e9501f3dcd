"""Rollups: how newly inserted events change the analytics tables.

:func:`apply` runs inside the aggregator's batch transaction and sees only the events that
this transaction inserted (duplicates were filtered by the raw insert), so every rollup
moves exactly once per event, whatever the bus redelivers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import date
from typing import Any

import asyncpg

from .mapping import EventRow

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


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def insert_events(conn: asyncpg.Connection, rows: Sequence[EventRow]) -> list[EventRow]:
    """Insert raw events idempotently; returns the rows that were new.

    ``rows`` must not repeat an event id (see :func:`unique_events`).
    """
    if not rows:
        return []
    inserted = await conn.fetch(
        INSERT_EVENTS,
        [r.event_id for r in rows],
        [r.occurred_at for r in rows],
        [r.event_type for r in rows],
        [r.user_hash for r in rows],
        [r.session_id for r in rows],
        [_json(r.properties) for r in rows],
    )
    new_ids = {record[0] for record in inserted}
    if len(new_ids) == len(rows):
        return list(rows)
    return [r for r in rows if r.event_id in new_ids]


def unique_events(rows: Sequence[EventRow]) -> list[EventRow]:
    """``rows`` without repeated event ids (one read can return a batch that was added twice)."""
    seen: set[object] = set()
    out = []
    for row in rows:
        if row.event_id not in seen:
            seen.add(row.event_id)
            out.append(row)
    return out


async def apply(conn: asyncpg.Connection, rows: Sequence[EventRow]) -> None:
    """Update every rollup from newly inserted events."""
    starts: list[EventRow] = []
    ends: list[EventRow] = []
    # user_hash, day -> [sessions, study_seconds, viewed, completed, xp, events]
    daily: dict[tuple[str, date], list[Any]] = defaultdict(lambda: [0, 0.0, 0, 0, 0, 0])
    for row in rows:
        if row.user_hash is None:
            continue
        kind = row.event_type
        acc = daily[(row.user_hash, row.occurred_at.date())]
        acc[5] += 1
        if kind == "session_start" and row.session_id is not None:
            starts.append(row)
            acc[0] += 1
        elif kind == "session_end" and row.session_id is not None:
            ends.append(row)
            acc[1] += float(row.properties.get("duration_s", 0.0))
        elif kind == "material_view":
            acc[2] += 1
        elif kind == "material_complete":
            acc[3] += 1
        elif kind == "xp_awarded":
            acc[4] += int(row.properties.get("xp_amount", 0))
    if starts:
        await conn.execute(
            UPSERT_SESSION_STARTS,
            [r.session_id for r in starts],
            [r.user_hash for r in starts],
            [r.occurred_at for r in starts],
        )
    if ends:
        await conn.execute(
            UPSERT_SESSION_ENDS,
            [r.session_id for r in ends],
            [r.user_hash for r in ends],
            [r.occurred_at for r in ends],
            [float(r.properties.get("duration_s", 0.0)) for r in ends],
            [int(r.properties.get("xp_earned", 0)) for r in ends],
            [_json(list(r.properties.get("materials_touched", []))) for r in ends],
            [str(r.properties.get("end_reason", "completed")) for r in ends],
        )
    if daily:
        keys = sorted(daily)  # a stable order avoids deadlocks between concurrent aggregators
        await conn.execute(
            UPSERT_DAILY,
            [k[0] for k in keys],
            [k[1] for k in keys],
            *([daily[k][i] for k in keys] for i in range(6)),
        )
