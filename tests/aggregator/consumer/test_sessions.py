"""A session starts once and ends once: any order, any duplication gives the brute-force answer.

The rule (aggregator/consumer/sessions.py): per learner and session id, the session counts at its
earliest ``session_start``; its earliest ``session_end`` ends it; its study time is that end's
``duration_s``, at most end minus start, spread over ``[end - study, end]``. The truth below is
computed from the event set with plain loops and shares nothing with the aggregator.

The property runs on real PostgreSQL: events arrive in random batches, in random order, some
twice, applied the way the aggregator applies them (fast path, then the careful one), on two
connections at once.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer import rollups
from studyin_analytics.aggregator.consumer.mapping import RawRecord
from studyin_analytics.aggregator.consumer.sessions import RECORDED_START, Mark, Session, StudyDeltas
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import ensure_partitions
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from studyin_analytics.instrumentation.events import SessionEnd

H = 3_600_000_000
D = 24 * H
USERS = ("t1:" + "a" * 32, "t1:" + "b" * 32)
SESSION_IDS = (uuid.UUID(int=1), uuid.UUID(int=2))
# Two days back at 20:00 UTC: the events below cross midnight and many hour boundaries.
BASE_US = (int(datetime.now(UTC).timestamp()) // 86400 - 2) * D + 20 * H
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Ev:
    event_id: uuid.UUID
    kind: str  # session_start, session_end, material_view
    user: str
    session: uuid.UUID
    time_us: int
    duration_s: float = 0.0
    span_start_us: int | None = None
    """A session_end carried by its session's span (the tracker's): when that span started."""

    def record(self) -> RawRecord:
        props: dict[str, Any] = {"session_id": str(self.session)}
        if self.kind == "session_end":
            props.update(duration_s=self.duration_s, xp_earned=3, end_reason="completed")
            if self.span_start_us is not None:
                props[RECORDED_START] = self.span_start_us
        elif self.kind == "material_view":
            props.update(material_id="m1", material_type="pdf")
        when = EPOCH + timedelta(microseconds=self.time_us)
        return (self.event_id, when, self.kind, self.user, self.session, orjson.dumps(props).decode())


_times = st.one_of(
    st.integers(0, 30 * 3600).map(lambda s: s * 1_000_000),  # on whole seconds: ties happen
    st.integers(0, 30 * H),
)
_durations = st.one_of(st.sampled_from([0.0, 1.0, 59.5, 3600.0, 86_400.0]), st.floats(0, 40 * 3600))


@st.composite
def events(draw: st.DrawFn) -> list[Ev]:
    out = []
    for index in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["session_start", "session_end", "session_end", "material_view"]))
        time_us = BASE_US + draw(_times)
        on_span = kind == "session_end" and draw(st.booleans())
        out.append(
            Ev(
                uuid.UUID(int=draw(st.integers(0, 2**120 - 1)) << 8 | index),  # unique, any order
                kind,
                draw(st.sampled_from(USERS)),
                draw(st.sampled_from(SESSION_IDS)),
                time_us,
                draw(_durations) if kind == "session_end" else 0.0,
                time_us - draw(st.integers(0, 10 * H)) if on_span else None,
            )
        )
    return out


# --- the truth, by brute force ---------------------------------------------------------------------


def _split(lo: int, hi: int, period: int) -> dict[int, int]:
    """Microseconds of [lo, hi) in each period, one period at a time."""
    out: dict[int, int] = {}
    p = lo // period
    while p * period < hi:
        overlap = min(hi, (p + 1) * period) - max(lo, p * period)
        if overlap > 0:
            out[p] = overlap
        p += 1
    return out


@dataclass
class Truth:
    sessions: dict[tuple[str, uuid.UUID], tuple[int | None, int | None, float | None, int]]
    hourly: dict[tuple[str, int], tuple[int, int, int]]  # events, sessions, study us
    daily: dict[tuple[str, int], tuple[int, int, int]]
    summary: dict[int, tuple[int, int, int, int]]  # events, sessions, study us, active users


def truth_of(evs: list[Ev]) -> Truth:
    unique = {e.event_id: e for e in evs}.values()
    hourly: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    daily: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    by_session: dict[tuple[str, uuid.UUID], list[Ev]] = defaultdict(list)
    for e in unique:
        hourly[(e.user, e.time_us // H)][0] += 1
        daily[(e.user, e.time_us // D)][0] += 1
        if e.kind != "material_view":
            by_session[(e.user, e.session)].append(e)
    sessions = {}
    for (user, sid), evs_of in by_session.items():
        # Starts: session_start events, and the session span's start carried by an end.
        starts = sorted(
            [(e.time_us, e.event_id.bytes) for e in evs_of if e.kind == "session_start"]
            + [(e.span_start_us, e.event_id.bytes) for e in evs_of if e.span_start_us is not None]
        )
        ends = sorted(
            (e for e in evs_of if e.kind == "session_end"), key=lambda e: (e.time_us, e.event_id.bytes)
        )
        start_us = starts[0][0] if starts else None
        end = ends[0] if ends else None
        study = 0
        if start_us is not None:
            hourly[(user, start_us // H)][1] += 1
            daily[(user, start_us // D)][1] += 1
        if start_us is not None and end is not None:
            study = max(0, min(round(end.duration_s * 1e6), end.time_us - start_us))
            for hour, us in _split(end.time_us - study, end.time_us, H).items():
                hourly[(user, hour)][2] += us
            for day, us in _split(end.time_us - study, end.time_us, D).items():
                daily[(user, day)][2] += us
        sessions[(user, sid)] = (
            start_us,
            None if end is None else end.time_us,
            None if end is None else end.duration_s,
            study,
        )
    summary: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (_user, hour), (n, s, us) in hourly.items():
        total = summary[hour]
        total[0] += n
        total[1] += s
        total[2] += us
        total[3] += 1
    return Truth(
        sessions,
        {k: (v[0], v[1], v[2]) for k, v in hourly.items()},
        {k: (v[0], v[1], v[2]) for k, v in daily.items()},
        {k: (v[0], v[1], v[2], v[3]) for k, v in summary.items()},
    )


# --- the pure rule, without a server ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(evs=events(), seed=st.integers(0, 2**32))
def test_the_rule_in_any_arrival_order_counts_the_brute_force_answer(evs: list[Ev], seed: int) -> None:
    """One event at a time (every change is a take-back), in any order, some twice."""
    rng = random.Random(seed)
    delivered = [*evs, *rng.sample(evs, len(evs) // 2)]
    rng.shuffle(delivered)
    stored: dict[tuple[str, uuid.UUID], Session] = {}
    seen: set[uuid.UUID] = set()
    totals: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for e in delivered:
        if e.event_id in seen or e.kind == "material_view":  # the raw insert drops a stored id
            seen.add(e.event_id)
            continue
        seen.add(e.event_id)
        candidate = Session()
        mark = Mark(e.time_us, e.event_id)
        if e.kind == "session_start":
            candidate.add_start(mark)
        else:
            if e.span_start_us is not None:
                candidate.add_start(Mark(e.span_start_us, e.event_id))
            candidate.add_end(mark, e.duration_s, 3, [], "completed")
        deltas = StudyDeltas()
        key = (e.user, e.session)
        if key in stored:
            after = stored[key].merged(candidate)
            deltas.move(e.user, stored[key], after)
            stored[key] = after
        else:
            deltas.count(e.user, candidate)
            stored[key] = candidate
        for k, (n, us) in deltas.nonzero().hourly.items():
            totals[k][0] += n
            totals[k][1] += us
    truth = truth_of(evs)
    got = {k: (n, us) for k, (n, us) in totals.items() if (n, us) != (0, 0)}
    want = {k: (n, us) for k, (_events, n, us) in truth.hourly.items() if (n, us) != (0, 0)}
    assert got == want
    for key, session in stored.items():
        start, end, duration, study = truth.sessions[key]
        got_marks = (
            None if session.start is None else session.start.time_us,
            None if session.end is None else session.end.time_us,
        )
        assert got_marks == (start, end)
        assert (session.counted_us, session.duration_s) == (study, duration)


# --- the same on PostgreSQL, as the aggregator applies it -------------------------------------------


async def _apply(conn: asyncpg.Connection, records: list[RawRecord], settings: Settings) -> None:
    """One transaction, as the consumer commits it: the fast path, then the careful one."""
    careful = False
    for _ in range(20):
        try:
            async with conn.transaction():
                await rollups.insert_events(
                    conn, records, None, careful=careful, variant=settings.postgres_schema_variant
                )
            return
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            careful = True  # stored already, or racing the other connection
    raise AssertionError("a batch never committed")


async def _stored(conn: asyncpg.Connection) -> Truth:
    """The tables, with rows that hold nothing left out (what a taken-back session leaves)."""
    sessions = {
        (r["user_hash"], r["session_id"]): (
            None if r["started_at"] is None else (r["started_at"] - EPOCH) // timedelta(microseconds=1),
            None if r["ended_at"] is None else (r["ended_at"] - EPOCH) // timedelta(microseconds=1),
            r["duration_s"],
            round(r.get("study_s", -1) * 1e6),
        )
        for r in await conn.fetch("SELECT * FROM learning_sessions")
    }

    def us(seconds: float) -> int:
        return round(seconds * 1e6)

    hourly = {
        (r["user_hash"], (r["hour"] - EPOCH) // timedelta(hours=1)): (
            r["events"],
            r["sessions"],
            us(r["study_seconds"]),
        )
        for r in await conn.fetch("SELECT * FROM user_activity_hourly")
    }
    daily = {
        (r["user_hash"], (r["day"] - date(1970, 1, 1)).days): (
            r["events"],
            r["sessions"],
            us(r["study_seconds"]),
        )
        for r in await conn.fetch("SELECT * FROM daily_activity_summary")
    }
    summary = {
        (r["hour"] - EPOCH) // timedelta(hours=1): (
            r["events"],
            r["sessions"],
            us(r["study_seconds"]),
            r["active_users"],
        )
        for r in await conn.fetch("SELECT * FROM hourly_analytics_summary")
    }
    return Truth(
        sessions,
        {k: v for k, v in hourly.items() if v != (0, 0, 0)},
        {k: v for k, v in daily.items() if v != (0, 0, 0)},
        {k: v for k, v in summary.items() if v != (0, 0, 0, 0)},
    )


async def _run(settings: Settings, evs: list[Ev], rng: random.Random) -> Truth:
    delivered = [e.record() for e in [*evs, *rng.sample(evs, len(evs) // 2)]]
    rng.shuffle(delivered)
    batches: list[list[RawRecord]] = []
    while delivered:
        size = rng.randint(1, 4)
        batches.append(delivered[:size])
        delivered = delivered[size:]
    admin = await connect(settings)
    lanes = [await connect(settings, "aggregator") for _ in range(2)]
    try:
        await admin.execute(
            "TRUNCATE analytics_events, learning_sessions, daily_activity_summary, "
            "user_activity_hourly, hourly_analytics_summary, gamification_stats"
        )
        await ensure_partitions(
            admin, {(EPOCH + timedelta(microseconds=BASE_US + d * D)).date() for d in range(3)}, set()
        )
        for conn in lanes:
            await rollups.setup_connection(conn)

        async def lane(conn: asyncpg.Connection, mine: list[list[RawRecord]]) -> None:
            for batch in mine:
                await _apply(conn, batch, settings)

        await asyncio.gather(lane(lanes[0], batches[0::2]), lane(lanes[1], batches[1::2]))
        return await _stored(admin)
    finally:
        for conn in (admin, *lanes):
            await conn.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(evs=events(), seed=st.integers(0, 2**32))
def test_sessions_on_postgres_in_any_order_with_duplicates_and_two_writers(
    migrated: Settings, evs: list[Ev], seed: int
) -> None:
    truth = truth_of(evs)
    got = asyncio.run(_run(migrated, evs, random.Random(seed)))
    assert got.hourly == truth.hourly
    assert got.daily == truth.daily
    assert got.summary == truth.summary
    assert got.sessions == truth.sessions


# --- whatever the carrier ------------------------------------------------------------------------------


async def test_a_session_ended_again_by_the_backend_counts_once(migrated: Settings) -> None:
    """The tracker ends an in-process session once; a stateless ``end_session`` for the same id
    (a retried request) and a hand-made ``session_end`` of an hour (an app bug) come later, on
    other spans: the first end counts, bounded by the span recorded between start and end."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(migrated)))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(migrated))
    learner = "backend-learner-0001"
    session = tracker.start_session(learner)
    await asyncio.sleep(0.3)
    ended = session.end()
    assert isinstance(ended, SessionEnd)
    assert session.end() is None  # the in-process session ends once
    tracker.end_session(learner, session.session_id, started_at=session.started_at - timedelta(hours=1))
    tracker.emit(SessionEnd, user_id=learner, session_id=session.session_id, duration_s=3600.0)
    provider.shutdown()
    async with Aggregator(migrated) as aggregator:
        totals = await aggregator.drain(timeout_s=30)
    assert totals.events_inserted == 4
    conn = await connect(migrated)
    try:
        sessions, seconds = await conn.fetchrow(
            "SELECT sum(sessions), sum(study_seconds) FROM daily_activity_summary"
        )
        assert sessions == 1
        assert 0.29 <= seconds <= ended.duration_s + 1e-6  # counted to the microsecond
        row = await conn.fetchrow("SELECT duration_s, study_s FROM learning_sessions")
    finally:
        await conn.close()
    assert row["duration_s"] == ended.duration_s and row["study_s"] == seconds
