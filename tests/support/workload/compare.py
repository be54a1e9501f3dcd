"""Every difference between the rollup tables in PostgreSQL and a workload's ground truth."""

from __future__ import annotations

import asyncpg

from studyin_analytics.aggregator.consumer import histogram

from ..raw import raw_count
from .build import NS
from .truth import Truth

# --- comparison -------------------------------------------------------------------------------------


def _close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-6) -> bool:
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


async def mismatches(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """Every difference between the rollup tables and the truth (empty when exact)."""
    raw = await raw_count(conn)
    bad: list[str] = [] if raw == t.raw else [f"raw events {raw} != {t.raw}"]
    tables = (_daily, _daily_learners, _hourly, _gamification, _coach, _system_minutes, _summary, _sessions)
    for table in tables:
        bad.extend(await table(conn, t))
    bad.extend(await hourly_route_mismatches(conn))
    return bad[:20]


async def _daily(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``daily_activity_summary`` against the truth."""
    bad: list[str] = []
    rows = await conn.fetch("SELECT * FROM daily_activity_summary")
    got = {(r["user_hash"], r["day"]): r for r in rows}
    if set(got) != set(t.daily):
        bad.append(f"daily keys differ: {len(got)} vs {len(t.daily)}")
    for key, want in t.daily.items():
        r = got.get(key)
        if r is None:
            continue
        have = [
            r["sessions"],
            r["study_seconds"],
            r["materials_viewed"],
            r["materials_completed"],
            r["xp"],
            r["events"],
        ]
        if have[:1] + have[2:] != want[:1] + want[2:] or not _close(have[1], want[1]):
            bad.append(f"daily {key}: {have} != {want}")
    return bad


async def _daily_learners(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``daily_learners`` against the truth (days of 0 learners may be stored)."""
    got = {r["day"]: r["learners"] for r in await conn.fetch("SELECT day, learners FROM daily_learners")}
    got = {day: n for day, n in got.items() if n != 0}
    if got == t.daily_learners:
        return []
    return [f"daily learners {sorted(got.items())} != {sorted(t.daily_learners.items())}"]


async def _hourly(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``user_activity_hourly`` against the truth."""
    bad: list[str] = []
    rows = await conn.fetch("SELECT * FROM user_activity_hourly")
    got = {(r["user_hash"], r["hour"]): r for r in rows}
    if set(got) != set(t.hourly):
        bad.append(f"hourly keys differ: {len(got)} vs {len(t.hourly)}")
    for key, want in t.hourly.items():
        r = got.get(key)
        if r is None:
            continue
        have = [
            r["events"],
            r["sessions"],
            r["study_seconds"],
            r["materials_viewed"],
            r["materials_completed"],
            r["xp"],
            r["ai_interactions"],
        ]
        if have[:2] + have[3:] != want[:2] + want[3:] or not _close(have[2], want[2]):
            bad.append(f"hourly {key}: {have} != {want}")
    return bad


async def _gamification(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``gamification_stats`` against the truth."""
    bad: list[str] = []
    rows = await conn.fetch("SELECT * FROM gamification_stats")
    got = {r["user_hash"]: r for r in rows}
    if set(got) != set(t.gamification):
        bad.append(f"gamification users differ: {len(got)} vs {len(t.gamification)}")
    for user, want in t.gamification.items():
        r = got.get(user)
        if r is None:
            continue
        have = (
            r["xp_total"],
            r["level"],
            sorted(r["achievements"]),
            r["current_streak"],
            r["longest_streak"],
        )
        exp = (want["xp"], want["level"], sorted(want["ach"]), want["streak"], want["longest"])
        if have != exp or abs(r["last_activity_at"].timestamp() - want["last"] / NS) > 1e-3:
            bad.append(f"gamification {user}: {have} != {exp}")
    return bad


async def _coach(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``ai_coach_metrics`` against the truth."""
    bad: list[str] = []
    rows = await conn.fetch("SELECT * FROM ai_coach_metrics")
    got = {(r["user_hash"], r["day"]): r for r in rows}
    if set(got) != set(t.ai):
        bad.append(f"ai keys differ: {len(got)} vs {len(t.ai)}")
    for key, want in t.ai.items():
        r = got.get(key)
        if r is None:
            continue
        hist: dict[str, int] = {}
        for value in want["latency"]:
            histogram.add(hist, value)
        have = (
            r["interactions"],
            r["tokens_in"],
            r["tokens_out"],
            r["models"],
            r["topics"],
            r["feedback_count"],
            r["rating_sum"],
            r["ratings"],
            r["latency_hist"],
        )
        exp = (
            want["interactions"],
            want["tokens_in"],
            want["tokens_out"],
            dict(want["models"]),
            dict(want["topics"]),
            want["feedback"],
            want["rating_sum"],
            dict(want["ratings"]),
            hist,
        )
        if have != exp or not _close(r["latency_ms_sum"], sum(want["latency"])):
            bad.append(f"ai {key}: {have} != {exp}")
    return bad


async def _system_minutes(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``system_metrics`` against the truth."""
    bad: list[str] = []
    rows = await conn.fetch("SELECT * FROM system_metrics")
    got = {(r["minute"], r["route"], r["method"]): r for r in rows}
    if set(got) != set(t.system):
        bad.append(f"system keys differ: {len(got)} vs {len(t.system)}")
    for key, want in t.system.items():
        r = got.get(key)
        if r is None:
            continue
        have = (
            r["requests"],
            r["errors"],
            r["client_errors"],
            r["errors_by_type"],
            sum(r["latency_hist"].values()),
        )
        exp = (
            want["requests"],
            want["errors"],
            want["client_errors"],
            dict(want["by_type"]),
            want["requests"],
        )
        if (
            have != exp
            or not _close(r["latency_sum_ms"], want["sum"])
            or not _close(r["latency_min_ms"], want["min"])
            or not _close(r["latency_max_ms"], want["max"])
        ):
            bad.append(f"system {key}: {have} != {exp}")
    return bad


async def _summary(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``hourly_analytics_summary`` against the truth."""
    bad: list[str] = []
    rows = await conn.fetch("SELECT * FROM hourly_analytics_summary")
    got = {r["hour"]: r for r in rows}
    if set(got) != set(t.summary):
        bad.append(f"summary hours differ: {sorted(got)} vs {sorted(t.summary)}")
    for hour, want in t.summary.items():
        r = got.get(hour)
        if r is None:
            continue
        have = (
            r["events"],
            r["events_by_type"],
            r["active_users"],
            r["sessions"],
            r["materials_viewed"],
            r["materials_completed"],
            r["xp"],
            r["ai_interactions"],
            r["api_requests"],
            r["api_errors"],
        )
        exp = (
            want["events"],
            dict(want["types"]),
            want.get("active", 0),
            want["sessions"],
            want["viewed"],
            want["completed"],
            want["xp"],
            want["ai"],
            want["api"],
            want["api_errors"],
        )
        if have != exp or not _close(r["study_seconds"], want["study_seconds"]):
            bad.append(f"summary {hour}: {have} != {exp}")
    return bad


async def _sessions(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """``learning_sessions`` against the truth."""
    bad: list[str] = []
    rows = await conn.fetch("SELECT * FROM learning_sessions")
    got = {str(r["session_id"]): r for r in rows}
    if set(got) != set(t.sessions):
        bad.append(f"sessions differ: {len(got)} vs {len(t.sessions)}")
    for sid, want in t.sessions.items():
        r = got.get(sid)
        if r is None:
            continue
        if (
            r["user_hash"] != want["user"]
            or r["xp_earned"] != want["xp_earned"]
            or sorted(r["materials_touched"]) != want["materials"]
            or not _close(r["duration_s"], want["duration_s"])
            or r["started_at"] is None
            or abs(r["started_at"].timestamp() - want["start_ns"] / NS) > 1e-3
        ):
            bad.append(f"session {sid} differs")
    return bad


async def hourly_route_mismatches(conn: asyncpg.Connection) -> list[str]:
    """The hourly route rollup (0011_route_hours) is the minute rows summed by hour, exactly."""
    hourly = await conn.fetch(
        """
        SELECT hour, route, method FROM (
            SELECT date_trunc('hour', minute) AS hour, route, method, sum(requests) AS requests,
                   sum(errors) AS errors, sum(client_errors) AS client_errors,
                   count_map_sum(errors_by_type) AS by_type, max(latency_max_ms) AS mx,
                   min(latency_min_ms) AS mn, count_map_sum(latency_hist) AS hist
            FROM system_metrics GROUP BY 1, 2, 3) m
        FULL JOIN system_metrics_hourly h USING (hour, route, method)
        WHERE (m.requests, m.errors, m.client_errors, m.by_type, m.mx, m.mn, m.hist)
              IS DISTINCT FROM (h.requests, h.errors, h.client_errors, h.errors_by_type,
                                h.latency_max_ms, h.latency_min_ms, h.latency_hist)
        """
    )
    return [f"system hour {tuple(r)} is not the sum of its minutes" for r in hourly]
