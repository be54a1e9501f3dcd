"""The ground truth of a :class:`Workload`, computed independently with plain loops.

It shares nothing with ``aggregator/consumer/rollups.py`` except the histogram bucket definition.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from .build import NS, Ev, Workload


def _t(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC)


# --- ground truth ---------------------------------------------------------------------------------


def _overlaps(start_ns: int, end_ns: int, step_s: int) -> list[tuple[int, float]]:
    """(period start in s, overlap seconds) of [start, end] with UTC periods of step_s."""
    out = []
    period = (start_ns // NS) // step_s * step_s
    while period * NS < end_ns:
        lo = max(start_ns, period * NS)
        hi = min(end_ns, (period + step_s) * NS)
        if hi > lo:
            out.append((period, (hi - lo) / NS))
        period += step_s
    return out


@dataclass
class Truth:
    raw: int = 0
    daily: dict[tuple[str, date], list[float]] = field(default_factory=dict)
    hourly: dict[tuple[str, datetime], list[float]] = field(default_factory=dict)
    gamification: dict[str, dict[str, Any]] = field(default_factory=dict)
    ai: dict[tuple[str, date], dict[str, Any]] = field(default_factory=dict)
    system: dict[tuple[datetime, str, str], dict[str, Any]] = field(default_factory=dict)
    summary: dict[datetime, dict[str, Any]] = field(default_factory=dict)
    daily_learners: dict[date, int] = field(default_factory=dict)
    """Learners per day (every stored daily row has an event: each counts), a cohort aggregate."""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    api_durations: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def _new_summary() -> dict[str, Any]:
    return {
        "events": 0,
        "types": defaultdict(int),
        "sessions": 0,
        "study_seconds": 0.0,
        "viewed": 0,
        "completed": 0,
        "xp": 0,
        "ai": 0,
        "api": 0,
        "api_errors": 0,
    }


@dataclass
class _Counting:
    """What :func:`truth_of` accumulates before it becomes a :class:`Truth`."""

    t: Truth
    daily: dict[Any, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0.0, 0, 0, 0, 0])
    )  # sess, secs, view, comp, xp, ev
    hourly: dict[Any, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0.0, 0, 0, 0, 0])
    )  # ev, sess, secs, v, c, xp, ai
    summary: dict[datetime, dict[str, Any]] = field(default_factory=lambda: defaultdict(_new_summary))
    game: dict[str, dict[str, Any]] = field(default_factory=dict)
    streak_seen: dict[str, tuple[int, int]] = field(default_factory=dict)


def truth_of(wl: Workload) -> Truth:
    c = _Counting(Truth(raw=len(wl.events)))
    for e in wl.events:
        when = _t(e.ns)
        hour = when.replace(minute=0, second=0, microsecond=0)
        s = c.summary[hour]
        s["events"] += 1
        s["types"][e.kind] += 1
        if e.kind == "api_request":
            _count_request(c.t, e, when, s)
        if e.user is not None:
            _count_learner_event(c, wl, e, e.user, when)
    t = c.t
    t.daily = dict(c.daily)
    for _user, day in t.daily:
        t.daily_learners[day] = t.daily_learners.get(day, 0) + 1
    t.hourly = dict(c.hourly)
    t.gamification = c.game
    for _user, hour in t.hourly:
        c.summary[hour].setdefault("active", 0)
        c.summary[hour]["active"] += 1
    t.summary = dict(c.summary)
    return t


def _count_request(t: Truth, e: Ev, when: datetime, s: dict[str, Any]) -> None:
    """An api_request event into the per-minute system metrics and the hour's summary ``s``."""
    key = (when.replace(second=0, microsecond=0), e.props["route"], e.props["method"])
    m = t.system.setdefault(
        key,
        {
            "requests": 0,
            "errors": 0,
            "client_errors": 0,
            "by_type": defaultdict(int),
            "sum": 0.0,
            "min": float("inf"),
            "max": 0.0,
            "durations": [],
        },
    )
    d = e.props["duration_ms"]
    m["requests"] += 1
    m["sum"] += d
    m["min"] = min(m["min"], d)
    m["max"] = max(m["max"], d)
    m["durations"].append(d)
    t.api_durations.setdefault((e.props["route"], e.props["method"]), []).append(d)
    s["api"] += 1
    if e.props["error_type"] is not None:
        m["errors"] += 1
        m["by_type"][e.props["error_type"]] += 1
        s["api_errors"] += 1
    elif 400 <= e.props["status_code"] < 500:
        m["client_errors"] += 1


def _count_learner_event(c: _Counting, wl: Workload, e: Ev, user: str, when: datetime) -> None:
    """An event of a learner into the daily and hourly rows, the summary and the learner's state."""
    day = when.date()
    hour = when.replace(minute=0, second=0, microsecond=0)
    s = c.summary[hour]
    daily, hourly = c.daily[(user, day)], c.hourly[(user, hour)]
    daily[5] += 1
    hourly[0] += 1
    g = c.game.setdefault(user, {"xp": 0, "level": 1, "ach": set(), "streak": 0, "longest": 0, "last": e.ns})
    g["last"] = max(g["last"], e.ns)
    if e.kind == "session_start":
        daily[0] += 1
        hourly[1] += 1
        s["sessions"] += 1
    elif e.kind == "session_end":
        _count_session_end(c, wl, e, user)
    elif e.kind == "material_view":
        daily[2] += 1
        hourly[3] += 1
        s["viewed"] += 1
    elif e.kind == "material_complete":
        daily[3] += 1
        hourly[4] += 1
        s["completed"] += 1
    elif e.kind == "xp_awarded":
        daily[4] += e.props["xp_amount"]
        hourly[5] += e.props["xp_amount"]
        s["xp"] += e.props["xp_amount"]
        g["xp"] += e.props["xp_amount"]
    elif e.kind == "level_up":
        g["level"] = max(g["level"], e.props["level"])
    elif e.kind == "achievement_unlocked":
        g["ach"].add(e.props["achievement_id"])
    elif e.kind in ("streak_updated", "streak_broken"):
        value = e.props.get("streak_days", 0)
        g["longest"] = max(g["longest"], e.props.get("streak_days", e.props.get("previous_streak_days", 0)))
        if user not in c.streak_seen or e.ns > c.streak_seen[user][0]:
            c.streak_seen[user] = (e.ns, value)
            g["streak"] = value
    elif e.kind in ("ai_coach_interaction", "ai_coach_feedback"):
        _count_coach(c.t, e, user, day)
        if e.kind == "ai_coach_interaction":
            hourly[6] += 1
            s["ai"] += 1


def _count_session_end(c: _Counting, wl: Workload, e: Ev, user: str) -> None:
    """The session's seconds split over the UTC days and hours it overlaps, and its own row."""
    _user, start_ns, end_ns = wl.sessions[e.props["session_id"]]
    for period, secs in _overlaps(start_ns, end_ns, 86400):
        c.daily[(user, datetime.fromtimestamp(period, tz=UTC).date())][1] += secs
    for period, secs in _overlaps(start_ns, end_ns, 3600):
        h = datetime.fromtimestamp(period, tz=UTC)
        c.hourly[(user, h)][2] += secs
        c.summary[h]["study_seconds"] += secs
    c.t.sessions[e.props["session_id"]] = {
        "user": user,
        "duration_s": e.props["duration_s"],
        "xp_earned": e.props["xp_earned"],
        "materials": e.props["materials_touched"],
        "start_ns": start_ns,
        "end_ns": end_ns,
    }


def _count_coach(t: Truth, e: Ev, user: str, day: date) -> None:
    """An AI-coach interaction or rating into the learner's day."""
    a = t.ai.setdefault(
        (user, day),
        {
            "interactions": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "latency": [],
            "models": defaultdict(int),
            "topics": defaultdict(int),
            "feedback": 0,
            "rating_sum": 0,
            "ratings": defaultdict(int),
        },
    )
    if e.kind == "ai_coach_interaction":
        a["interactions"] += 1
        a["tokens_in"] += e.props["tokens_in"]
        a["tokens_out"] += e.props["tokens_out"]
        a["latency"].append(e.props["latency_ms"])
        a["models"][e.props["model"]] += 1
        a["topics"][e.props["topic_category"]] += 1
    else:
        a["feedback"] += 1
        a["rating_sum"] += e.props["rating"]
        a["ratings"][str(e.props["rating"])] += 1
