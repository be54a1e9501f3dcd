"""The ground truth of a :class:`Workload`, computed independently with plain loops.

It shares nothing with ``aggregator/consumer/rollups.py`` except the histogram bucket definition.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from .build import NS, Workload


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
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    api_durations: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def truth_of(wl: Workload) -> Truth:
    t = Truth(raw=len(wl.events))
    daily: dict[Any, list[float]] = defaultdict(
        lambda: [0, 0.0, 0, 0, 0, 0]
    )  # sess, secs, view, comp, xp, ev
    hourly: dict[Any, list[float]] = defaultdict(
        lambda: [0, 0, 0.0, 0, 0, 0, 0]
    )  # ev, sess, secs, v, c, xp, ai
    summary: dict[datetime, dict[str, Any]] = defaultdict(
        lambda: {
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
    )
    game: dict[str, dict[str, Any]] = {}
    streak_seen: dict[str, tuple[int, int]] = {}
    for e in wl.events:
        when = _t(e.ns)
        hour = when.replace(minute=0, second=0, microsecond=0)
        s = summary[hour]
        s["events"] += 1
        s["types"][e.kind] += 1
        if e.kind == "api_request":
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
        if e.user is None:
            continue
        day = when.date()
        daily[(e.user, day)][5] += 1
        hourly[(e.user, hour)][0] += 1
        g = game.setdefault(
            e.user, {"xp": 0, "level": 1, "ach": set(), "streak": 0, "longest": 0, "last": e.ns}
        )
        g["last"] = max(g["last"], e.ns)
        if e.kind == "session_start":
            daily[(e.user, day)][0] += 1
            hourly[(e.user, hour)][1] += 1
            s["sessions"] += 1
        elif e.kind == "session_end":
            _user, start_ns, end_ns = wl.sessions[e.props["session_id"]]
            for period, secs in _overlaps(start_ns, end_ns, 86400):
                daily[(e.user, datetime.fromtimestamp(period, tz=UTC).date())][1] += secs
            for period, secs in _overlaps(start_ns, end_ns, 3600):
                h = datetime.fromtimestamp(period, tz=UTC)
                hourly[(e.user, h)][2] += secs
                summary[h]["study_seconds"] += secs
            t.sessions[e.props["session_id"]] = {
                "user": e.user,
                "duration_s": e.props["duration_s"],
                "xp_earned": e.props["xp_earned"],
                "materials": e.props["materials_touched"],
                "start_ns": start_ns,
                "end_ns": end_ns,
            }
        elif e.kind == "material_view":
            daily[(e.user, day)][2] += 1
            hourly[(e.user, hour)][3] += 1
            s["viewed"] += 1
        elif e.kind == "material_complete":
            daily[(e.user, day)][3] += 1
            hourly[(e.user, hour)][4] += 1
            s["completed"] += 1
        elif e.kind == "xp_awarded":
            daily[(e.user, day)][4] += e.props["xp_amount"]
            hourly[(e.user, hour)][5] += e.props["xp_amount"]
            s["xp"] += e.props["xp_amount"]
            g["xp"] += e.props["xp_amount"]
        elif e.kind == "level_up":
            g["level"] = max(g["level"], e.props["level"])
        elif e.kind == "achievement_unlocked":
            g["ach"].add(e.props["achievement_id"])
        elif e.kind in ("streak_updated", "streak_broken"):
            value = e.props.get("streak_days", 0)
            g["longest"] = max(
                g["longest"], e.props.get("streak_days", e.props.get("previous_streak_days", 0))
            )
            if e.user not in streak_seen or e.ns > streak_seen[e.user][0]:
                streak_seen[e.user] = (e.ns, value)
                g["streak"] = value
        elif e.kind in ("ai_coach_interaction", "ai_coach_feedback"):
            a = t.ai.setdefault(
                (e.user, day),
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
                hourly[(e.user, hour)][6] += 1
                s["ai"] += 1
            else:
                a["feedback"] += 1
                a["rating_sum"] += e.props["rating"]
                a["ratings"][str(e.props["rating"])] += 1
    t.daily = dict(daily)
    t.hourly = dict(hourly)
    t.gamification = game
    for _user, hour in t.hourly:
        summary[hour].setdefault("active", 0)
        summary[hour]["active"] += 1
    t.summary = dict(summary)
    return t
