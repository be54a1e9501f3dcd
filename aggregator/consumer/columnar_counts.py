"""Per-key deltas of the main rollups from a batch's event table (:func:`.columnar.events`), by
PyArrow group-bys: a prototype measured for issue 25 (docs/aggregator.md, "A columnar batch,
measured"), **not on the aggregator's path**.

It follows :class:`.counting.Counts` for ``daily_activity_summary`` and ``user_activity_hourly``
(events, materials viewed and completed, XP, AI interactions; sessions and study time are not
derived here), ``gamification_stats`` (XP, level, achievements, streak last-writer-wins on (time,
event id), longest streak, last activity), ``system_metrics`` (requests, errors by type, client
errors, latency sum, min, max and histogram per minute, route and method) and the events per
(hour, type). :func:`as_counts` turns the result into the shapes of ``Counts`` for comparison.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...exporter.event_types import API_REQUEST
from . import histogram
from .counting import DAY_US, HOUR_US, MINUTE_US

__all__ = ["Deltas", "as_counts", "buckets", "deltas"]

_SYSTEM_KEY = ["minute", "route", "method"]


class Deltas(NamedTuple):
    by_type: pa.Table
    daily: pa.Table
    hourly: pa.Table
    gamification: pa.Table
    achievements: pa.Table
    streaks: pa.Table
    system: pa.Table
    system_errors: pa.Table
    system_hist: pa.Table


def buckets(values: np.ndarray) -> np.ndarray:
    """:func:`.histogram.bucket` of each value (NumPy's ``log``: the same libm result but for the odd ULP)."""
    small = values <= histogram.MIN_VALUE
    keys = np.ceil(np.log(np.where(small, 1.0, values)) / histogram.LOG_GAMMA).astype(np.int64)
    return np.where(small, histogram.MIN_KEY, keys)


def _is(types: pa.Array, name: str) -> pa.Array:
    return pc.equal(types, name)


def _when(condition: pa.Array, values: Any, otherwise: int) -> pa.Array:
    return pc.if_else(condition, values, pa.scalar(otherwise, pa.int64()))


def _users(table: pa.Table, time_us: np.ndarray) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table, pa.Table]:
    """daily, hourly, gamification, achievements and streaks from the events that have a learner."""
    types = table["event_type"]
    xp_awarded = _is(types, "xp_awarded")
    updated, broken = _is(types, "streak_updated"), _is(types, "streak_broken")
    one = pa.scalar(1, pa.int64())
    zero = pa.scalar(0, pa.int64())
    t = pa.table(
        {
            "user": table["user"],
            "day": time_us // DAY_US,
            "hour": time_us // HOUR_US,
            "time_us": time_us,
            "event_id": table["event_id"],
            "event_type": types,
            "viewed": pc.if_else(_is(types, "material_view"), one, zero),
            "completed": pc.if_else(_is(types, "material_complete"), one, zero),
            "ai": pc.if_else(_is(types, "ai_coach_interaction"), one, zero),
            "xp": _when(xp_awarded, table["xp"], 0),
            "level": _when(_is(types, "level_up"), table["level"], 1),
            "reported": _when(updated, table["streak_days"], 0),
            "achievement": table["achievement"].fill_null("None"),
        }
    )
    t = t.set_column(
        t.schema.get_field_index("reported"),
        "reported",
        pc.if_else(broken, table["previous_days"], t["reported"]),
    )
    t = t.filter(pc.is_valid(t["user"]))
    counters = [("viewed", "sum"), ("completed", "sum"), ("xp", "sum")]
    daily = t.group_by(["user", "day"]).aggregate([("time_us", "count"), *counters])
    hourly = t.group_by(["user", "hour"]).aggregate([("time_us", "count"), *counters, ("ai", "sum")])
    gamification = t.group_by("user").aggregate(
        [("xp", "sum"), ("level", "max"), ("reported", "max"), ("time_us", "max")]
    )
    achieved = t.filter(_is(t["event_type"], "achievement_unlocked"))
    achievements = achieved.group_by(["user", "achievement"]).aggregate([("time_us", "count")])
    streak = t.filter(pc.or_(_is(t["event_type"], "streak_updated"), _is(t["event_type"], "streak_broken")))
    streak = streak.append_column(
        "days", _when(_is(streak["event_type"], "streak_updated"), streak["reported"], 0)
    ).sort_by([("user", "ascending"), ("time_us", "ascending"), ("event_id", "ascending")])
    streaks = streak.group_by("user", use_threads=False).aggregate(
        [("time_us", "last"), ("event_id", "last"), ("days", "last")]
    )
    return daily, hourly, gamification, achievements, streaks


def _system(table: pa.Table, time_us: np.ndarray) -> tuple[pa.Table, pa.Table, pa.Table]:
    """system_metrics per (minute, route, method): counters, errors by type, latency histogram."""
    is_request = _is(table["event_type"], API_REQUEST)
    requests = table.filter(is_request)
    minute = (time_us // MINUTE_US)[is_request.to_numpy(zero_copy_only=False)]
    duration = requests["duration_ms"].to_numpy()
    status = requests["status_code"].to_numpy()
    failed = pc.is_valid(requests["error_type"])
    client = np.logical_and(
        np.logical_not(failed.to_numpy(zero_copy_only=False)), (status >= 400) & (status < 500)
    )
    t = pa.table(
        {
            "minute": minute,
            "route": requests["route"],
            "method": requests["method"],
            "error": failed.cast(pa.int64()),
            "client": client.astype(np.int64),
            "duration": duration,
            "bucket": buckets(duration),
            "error_type": requests["error_type"],
        }
    )
    system = t.group_by(_SYSTEM_KEY).aggregate(
        [
            ("duration", "count"),
            ("error", "sum"),
            ("client", "sum"),
            ("duration", "sum"),
            ("duration", "min"),
            ("duration", "max"),
        ]
    )
    errors = t.filter(failed).group_by([*_SYSTEM_KEY, "error_type"]).aggregate([("duration", "count")])
    hist = t.group_by([*_SYSTEM_KEY, "bucket"]).aggregate([("duration", "count")])
    return system, errors, hist


def deltas(table: pa.Table) -> Deltas:
    """The per-key deltas of a batch's events (one row per key, group-by calls only)."""
    time_us = table["time_us"].to_numpy()
    by_type = pa.table({"hour": time_us // HOUR_US, "event_type": table["event_type"]})
    by_type = by_type.group_by(["hour", "event_type"]).aggregate([("hour", "count")])
    return Deltas(by_type, *_users(table, time_us), *_system(table, time_us))


def as_counts(found: Deltas) -> dict[str, dict[Any, Any]]:
    """The deltas as plain dicts keyed as :class:`.counting.Counts` keys them (per key, for checks)."""
    out: dict[str, dict[Any, Any]] = {
        "by_type": {(r["hour"], r["event_type"]): r["hour_count"] for r in found.by_type.to_pylist()},
        "daily": {
            (r["user"], r["day"]): [r["time_us_count"], r["viewed_sum"], r["completed_sum"], r["xp_sum"]]
            for r in found.daily.to_pylist()
        },
        "hourly": {
            (r["user"], r["hour"]): [
                r["time_us_count"],
                r["viewed_sum"],
                r["completed_sum"],
                r["xp_sum"],
                r["ai_sum"],
            ]
            for r in found.hourly.to_pylist()
        },
    }
    achievements: dict[str, set[str]] = {}
    for r in found.achievements.to_pylist():
        achievements.setdefault(r["user"], set()).add(r["achievement"])
    streaks = {r["user"]: r for r in found.streaks.to_pylist()}
    gamification = {}
    for r in found.gamification.to_pylist():
        user = r["user"]
        streak = streaks.get(user)
        gamification[user] = [
            r["xp_sum"],
            max(1, r["level_max"]),
            achievements.get(user),
            None if streak is None else (streak["time_us_last"], streak["event_id_last"]),
            0 if streak is None else streak["days_last"],
            max(0, r["reported_max"]),
            r["time_us_max"],
        ]
    out["gamification"] = gamification
    system: dict[Any, list[Any]] = {}
    for r in found.system.to_pylist():
        system[(r["minute"], r["route"], r["method"])] = [
            r["duration_count"],
            r["error_sum"],
            r["client_sum"],
            {},
            r["duration_sum"],
            r["duration_min"],
            r["duration_max"],
            {},
        ]
    for r in found.system_errors.to_pylist():
        system[(r["minute"], r["route"], r["method"])][3][r["error_type"]] = r["duration_count"]
    for r in found.system_hist.to_pylist():
        system[(r["minute"], r["route"], r["method"])][7][r["bucket"]] = r["duration_count"]
    out["system"] = system
    return out
