"""A known workload for the aggregator tests, and its ground truth computed independently.

Spans are built as :class:`SpanRecord` and encoded with the real wire format
(``wire.encode_records`` + ``wire.entry_fields``), exactly what the exporter and gateway put
on the bus. The truth below is computed from the generated events with plain loops; it
shares nothing with ``aggregator/consumer/rollups.py`` except the histogram bucket definition.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import redis

from studyin_analytics.aggregator.consumer import histogram
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation.privacy import Pseudonymizer

NS = 1_000_000_000
ROUTES = [("/materials/{id}", "GET"), ("/sessions", "POST"), ("/sessions/{id}/end", "POST"), ("/me", "GET")]
MATERIALS = ["cardio-101", "ecg-basics", "renal-qbank", "pharm-cards", "neuro-cases"]
MODELS = ["coach-small", "coach-large"]
TOPICS = ["cardiology", "pharmacology", "anatomy"]


@dataclass
class Ev:
    kind: str
    ns: int
    user: str | None
    props: dict[str, Any]
    session: str | None = None


@dataclass
class Workload:
    entries: list[dict[Any, Any]] = field(default_factory=list)
    events: list[Ev] = field(default_factory=list)
    sessions: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # id -> user, start ns, end ns

    @property
    def event_count(self) -> int:
        return len(self.events)

    def __add__(self, other: Workload) -> Workload:
        """Both workloads (distinct seeds: distinct learners and sessions), entries in order."""
        return Workload(
            [*self.entries, *other.entries],
            [*self.events, *other.events],
            {**self.sessions, **other.sessions},
        )


def _t(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC)


def build(
    pseudonymizer: Pseudonymizer,
    users: int = 300,
    seed: int = 1,
    spans_per_entry: int = 40,
    hours_ago: int = 3,
) -> Workload:
    """Sessions with every event type, plus HTTP server spans, over ~3 hours from ``hours_ago``
    (and 20 minutes earlier: the last session ends up to 195 minutes after the first starts, and
    every event stays in the past, as an app's do; the aggregator refuses events ahead of its clock)."""
    rng = random.Random(seed)
    wl = Workload()
    now_ms = int(datetime.now(UTC).timestamp()) * 1000
    start_ms = now_ms - hours_ago * 3600 * 1000 - 20 * 60 * 1000
    base_ns = start_ms * 1_000_000 + 500_000  # +0.5 ms: never on a boundary
    spans: list[SpanRecord] = []
    resource = {"service.name": "workload"}

    def ms(n: int) -> int:
        return n * 1_000_000

    for u in range(users):
        user = pseudonymizer.pseudonymize(f"wl-user-{seed}-{u}")
        streak_ns = base_ns + ms(rng.randrange(0, 1000)) + u  # unique per user
        for s in range(rng.randint(1, 3)):
            start = base_ns + ms(rng.randrange(0, 150 * 60 * 1000))
            duration_ms = rng.randrange(60_000, 45 * 60 * 1000)
            end = start + ms(duration_ms)
            sid = str(uuid.UUID(int=rng.getrandbits(128)))
            trace_id = rng.randbytes(16)
            span_id = rng.randbytes(8)
            evs: list[Ev] = [Ev("session_start", start, user, {"session_id": sid}, sid)]
            xp_total = 0
            touched: list[str] = []
            for k in range(rng.randint(2, 8)):
                at = start + ms(1000 * (k + 1))
                material = rng.choice(MATERIALS)
                touched.append(material)
                evs.append(Ev("material_view", at, user, {"material_id": material, "session_id": sid}, sid))
                if rng.random() < 0.5:
                    evs.append(
                        Ev(
                            "material_complete",
                            at + ms(1),
                            user,
                            {"material_id": material, "session_id": sid},
                            sid,
                        )
                    )
                    amount = rng.choice([5, 10, 25])
                    xp_total += amount
                    evs.append(
                        Ev(
                            "xp_awarded",
                            at + ms(2),
                            user,
                            {"xp_amount": amount, "xp_reason": "complete"},
                            sid,
                        )
                    )
            if rng.random() < 0.6:
                evs.append(
                    Ev(
                        "ai_coach_interaction",
                        start + ms(500),
                        user,
                        {
                            "interaction_id": str(uuid.UUID(int=rng.getrandbits(128))),
                            "latency_ms": round(rng.lognormvariate(6, 0.7), 3),
                            "tokens_in": rng.randrange(10, 500),
                            "tokens_out": rng.randrange(10, 900),
                            "model": rng.choice(MODELS),
                            "topic_category": rng.choice(TOPICS),
                        },
                        sid,
                    )
                )
                if rng.random() < 0.5:
                    evs.append(
                        Ev(
                            "ai_coach_feedback",
                            start + ms(600),
                            user,
                            {"interaction_id": str(uuid.uuid4()), "rating": rng.randint(1, 5)},
                            sid,
                        )
                    )
            if s == 0:
                evs.append(
                    Ev("level_up", start + ms(700), user, {"level": rng.randint(2, 9), "total_xp": 100})
                )
                evs.append(
                    Ev(
                        "achievement_unlocked",
                        start + ms(701),
                        user,
                        {"achievement_id": rng.choice(MATERIALS)},
                    )
                )
                if rng.random() < 0.3:
                    evs.append(
                        Ev(
                            "streak_broken",
                            streak_ns + ms(5),
                            user,
                            {"previous_streak_days": rng.randint(1, 40)},
                        )
                    )
                evs.append(
                    Ev("streak_updated", streak_ns + ms(s * 7), user, {"streak_days": rng.randint(1, 30)})
                )
            evs.append(
                Ev(
                    "session_end",
                    end,
                    user,
                    {
                        "session_id": sid,
                        "duration_s": duration_ms / 1000,
                        "xp_earned": xp_total,
                        "materials_touched": sorted(set(touched)),
                        "end_reason": "completed",
                    },
                    sid,
                )
            )
            wl.sessions[sid] = (user, start, end)
            wl.events.extend(evs)
            attributes: dict[str, Any] = {"user.hash": user, "studyin.session.id": sid}
            spans.append(
                SpanRecord(
                    trace_id,
                    span_id,
                    None,
                    "studyin.learning_session",
                    wire.SPAN_KIND_INTERNAL,
                    start,
                    end,
                    0,
                    attributes,
                    [EventRecord("studyin." + e.kind, e.ns, _attrs(e.props)) for e in evs],
                    resource,
                )
            )
        for _ in range(rng.randint(3, 12)):
            route, method = rng.choice(ROUTES)
            start = base_ns + ms(rng.randrange(0, 170 * 60 * 1000))
            duration_ns = int(rng.lognormvariate(3, 1.0) * 1_000_000) + 1000
            end = start + duration_ns
            status = rng.choice([200, 200, 200, 200, 201, 404, 500])
            attrs: dict[str, Any] = {
                "http.route": route,
                "http.request.method": method,
                "http.response.status_code": status,
            }
            if rng.random() < 0.7:
                attrs["user.hash"] = user
            error_type = None
            if status == 500:
                error_type = rng.choice(["RuntimeError", "500"])
                attrs["error.type"] = error_type
            spans.append(
                SpanRecord(
                    rng.randbytes(16),
                    rng.randbytes(8),
                    None,
                    f"{method} {route}",
                    wire.SPAN_KIND_SERVER,
                    start,
                    end,
                    2 if error_type else 0,
                    attrs,
                    [],
                    resource,
                )
            )
            wl.events.append(
                Ev(
                    "api_request",
                    end,
                    attrs.get("user.hash"),
                    {
                        "route": route,
                        "method": method,
                        "status_code": status,
                        "duration_ms": (end - start) / 1e6,
                        "error_type": error_type,
                    },
                )
            )
    rng.shuffle(spans)
    for i in range(0, len(spans), spans_per_entry):
        chunk = spans[i : i + spans_per_entry]
        wl.entries.append(wire.entry_fields(wire.encode_records(chunk), len(chunk)))
    return wl


def _attrs(props: dict[str, Any]) -> dict[str, Any]:
    names = {
        "session_id": "studyin.session.id",
        "duration_s": "studyin.session.duration_s",
        "xp_earned": "studyin.session.xp_earned",
        "materials_touched": "studyin.session.materials_touched",
        "end_reason": "studyin.session.end_reason",
        "material_id": "studyin.material.id",
        "xp_amount": "studyin.xp.amount",
        "xp_reason": "studyin.xp.reason",
        "level": "studyin.level",
        "total_xp": "studyin.xp.total",
        "achievement_id": "studyin.achievement.id",
        "streak_days": "studyin.streak.days",
        "previous_streak_days": "studyin.streak.previous_days",
        "interaction_id": "studyin.ai.interaction_id",
        "latency_ms": "studyin.ai.latency_ms",
        "tokens_in": "studyin.ai.tokens_in",
        "tokens_out": "studyin.ai.tokens_out",
        "model": "studyin.ai.model",
        "topic_category": "studyin.ai.topic_category",
        "rating": "studyin.ai.rating",
    }
    return {names[k]: v for k, v in props.items()}


def push(redis_url: str, stream: str, entries: list[dict[Any, Any]]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(stream, fields)
        pipe.execute()
    finally:
        client.close()


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


# --- comparison -------------------------------------------------------------------------------------


def _close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-6) -> bool:
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


async def mismatches(conn: asyncpg.Connection, t: Truth) -> list[str]:
    """Every difference between the rollup tables and the truth (empty when exact)."""
    bad: list[str] = []
    raw = await conn.fetchval("SELECT count(*) FROM analytics_events")
    if raw != t.raw:
        bad.append(f"raw events {raw} != {t.raw}")

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
    return bad[:20]


# --- bad events -------------------------------------------------------------------------------------

DAY_NS = 86_400 * NS


def event_span(
    pseudonymizer: Pseudonymizer,
    name: str,
    attributes: dict[str, Any],
    *,
    at_ns: int | None = None,
    learner: str = "bad-event-learner",
) -> SpanRecord:
    """A span carrying one event ``name`` at ``at_ns`` (default: now)."""
    at = time.time_ns() if at_ns is None else at_ns
    return SpanRecord(
        random.randbytes(16),
        random.randbytes(8),
        None,
        "studyin.event",
        wire.SPAN_KIND_INTERNAL,
        at - 1000,
        at,
        0,
        {"user.hash": pseudonymizer.pseudonymize(learner)},
        [EventRecord(name, at, attributes)],
        {"service.name": "bad-events"},
    )


def bad_spans(pseudonymizer: Pseudonymizer) -> list[SpanRecord]:
    """One span per kind of event no retry can store: a NUL character PostgreSQL refuses, a
    field the rollups cannot use, an event 300 days ahead, an HTTP server span ending 2 days ahead."""
    server = event_span(pseudonymizer, "not.a.domain.event", {}, at_ns=time.time_ns() + 2 * DAY_NS)
    server = server._replace(
        kind=wire.SPAN_KIND_SERVER,
        attributes={"http.route": "/future", "http.request.method": "GET", "http.response.status_code": 200},
    )
    return [
        event_span(pseudonymizer, "studyin.material_view", {"studyin.material.id": "cardio\x00101"}),
        event_span(pseudonymizer, "studyin.xp_awarded", {"studyin.xp.amount": "ten"}),
        event_span(
            pseudonymizer,
            "studyin.material_view",
            {"studyin.material.id": "from-the-future"},
            at_ns=time.time_ns() + 300 * DAY_NS,
        ),
        server,
    ]


def with_spans(entry: dict[Any, Any], spans: list[SpanRecord]) -> dict[Any, Any]:
    """``entry`` with ``spans`` appended (its own events keep their ids)."""
    records = [*wire.decode_entry(entry), *spans]
    return wire.entry_fields(wire.encode_records(records), len(records))
