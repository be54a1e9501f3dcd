"""A known workload for the aggregator tests (its ground truth: truth.py), and events no retry can store.

Spans are built as :class:`SpanRecord` and encoded with the real wire format
(``wire.encode_records`` + ``wire.entry_fields``), exactly what the exporter and gateway put
on the bus.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from studyin_analytics.exporter import wire
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation.privacy import Pseudonymizer

NS = 1_000_000_000
ROUTES = [("/materials/{id}", "GET"), ("/sessions", "POST"), ("/sessions/{id}/end", "POST"), ("/me", "GET")]
MATERIALS = ["cardio-101", "ecg-basics", "renal-qbank", "pharm-cards", "neuro-cases"]
MODELS = ["coach-small", "coach-large"]
TOPICS = ["cardiology", "pharmacology", "anatomy"]
RESOURCE = {"service.name": "workload"}


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
    # The helpers draw from ``rng`` in the order this loop always did: a seed gives the same workload.
    for u in range(users):
        user = pseudonymizer.pseudonymize(f"wl-user-{seed}-{u}")
        streak_ns = base_ns + _ms(rng.randrange(0, 1000)) + u  # unique per user
        for s in range(rng.randint(1, 3)):
            spans.append(_session(rng, wl, user, base_ns, streak_ns if s == 0 else None))
        for _ in range(rng.randint(3, 12)):
            spans.append(_request(rng, wl, user, base_ns))
    rng.shuffle(spans)
    for i in range(0, len(spans), spans_per_entry):
        chunk = spans[i : i + spans_per_entry]
        wl.entries.append(wire.entry_fields(wire.encode_records(chunk), len(chunk)))
    return wl


def _ms(n: int) -> int:
    return n * 1_000_000


def _session(rng: random.Random, wl: Workload, user: str, base_ns: int, streak_ns: int | None) -> SpanRecord:
    """One learning session span with its events (recorded in ``wl``); ``streak_ns`` is given for
    the learner's first session, which also carries the gamification events."""
    start = base_ns + _ms(rng.randrange(0, 150 * 60 * 1000))
    duration_ms = rng.randrange(60_000, 45 * 60 * 1000)
    end = start + _ms(duration_ms)
    sid = str(uuid.UUID(int=rng.getrandbits(128)))
    trace_id = rng.randbytes(16)
    span_id = rng.randbytes(8)
    evs: list[Ev] = [Ev("session_start", start, user, {"session_id": sid}, sid)]
    xp_total, touched = _materials(rng, evs, user, sid, start)
    if rng.random() < 0.6:
        _coach(rng, evs, user, sid, start)
    if streak_ns is not None:
        _gamification(rng, evs, user, start, streak_ns)
    end_props = {
        "session_id": sid,
        "duration_s": duration_ms / 1000,
        "xp_earned": xp_total,
        "materials_touched": sorted(set(touched)),
        "end_reason": "completed",
    }
    evs.append(Ev("session_end", end, user, end_props, sid))
    wl.sessions[sid] = (user, start, end)
    wl.events.extend(evs)
    attributes: dict[str, Any] = {"user.hash": user, "studyin.session.id": sid}
    events = [EventRecord("studyin." + e.kind, e.ns, _attrs(e.props)) for e in evs]
    return SpanRecord(
        trace_id, span_id, None, "studyin.learning_session", wire.SPAN_KIND_INTERNAL, start, end, 0,
        attributes, events, RESOURCE,
    )  # fmt: skip


def _materials(rng: random.Random, evs: list[Ev], user: str, sid: str, start: int) -> tuple[int, list[str]]:
    """Views, and completions with their XP, appended to ``evs``: the XP earned and materials touched."""
    xp_total = 0
    touched: list[str] = []
    for k in range(rng.randint(2, 8)):
        at = start + _ms(1000 * (k + 1))
        material = rng.choice(MATERIALS)
        touched.append(material)
        evs.append(Ev("material_view", at, user, {"material_id": material, "session_id": sid}, sid))
        if rng.random() < 0.5:
            props = {"material_id": material, "session_id": sid}
            evs.append(Ev("material_complete", at + _ms(1), user, props, sid))
            amount = rng.choice([5, 10, 25])
            xp_total += amount
            evs.append(
                Ev("xp_awarded", at + _ms(2), user, {"xp_amount": amount, "xp_reason": "complete"}, sid)
            )
    return xp_total, touched


def _coach(rng: random.Random, evs: list[Ev], user: str, sid: str, start: int) -> None:
    """An AI-coach interaction, and half the time a rating (of another interaction id), into ``evs``."""
    props = {
        "interaction_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "latency_ms": round(rng.lognormvariate(6, 0.7), 3),
        "tokens_in": rng.randrange(10, 500),
        "tokens_out": rng.randrange(10, 900),
        "model": rng.choice(MODELS),
        "topic_category": rng.choice(TOPICS),
    }
    evs.append(Ev("ai_coach_interaction", start + _ms(500), user, props, sid))
    if rng.random() < 0.5:
        feedback = {"interaction_id": str(uuid.uuid4()), "rating": rng.randint(1, 5)}
        evs.append(Ev("ai_coach_feedback", start + _ms(600), user, feedback, sid))


def _gamification(rng: random.Random, evs: list[Ev], user: str, start: int, streak_ns: int) -> None:
    """Level, achievement and streak events of a learner's first session (no session id), into ``evs``."""
    evs.append(Ev("level_up", start + _ms(700), user, {"level": rng.randint(2, 9), "total_xp": 100}))
    evs.append(Ev("achievement_unlocked", start + _ms(701), user, {"achievement_id": rng.choice(MATERIALS)}))
    if rng.random() < 0.3:
        evs.append(
            Ev("streak_broken", streak_ns + _ms(5), user, {"previous_streak_days": rng.randint(1, 40)})
        )
    evs.append(Ev("streak_updated", streak_ns, user, {"streak_days": rng.randint(1, 30)}))


def _request(rng: random.Random, wl: Workload, user: str, base_ns: int) -> SpanRecord:
    """One HTTP server span, attributed 70% of the time, and its api_request event (recorded in ``wl``)."""
    route, method = rng.choice(ROUTES)
    start = base_ns + _ms(rng.randrange(0, 170 * 60 * 1000))
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
    props = {
        "route": route,
        "method": method,
        "status_code": status,
        "duration_ms": (end - start) / 1e6,
        "error_type": error_type,
    }
    wl.events.append(Ev("api_request", end, attrs.get("user.hash"), props))
    return SpanRecord(
        rng.randbytes(16), rng.randbytes(8), None, f"{method} {route}", wire.SPAN_KIND_SERVER, start, end,
        2 if error_type else 0, attrs, [], RESOURCE,
    )  # fmt: skip


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
