"""The rebuild registry and its day recount (server-free): days rebuilt one by one add up to the
rollup of all events at once, whatever the events and sessions."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer.mapping import EventRow
from studyin_analytics.aggregator.consumer.rebuild import RebuildRefused, select_tables
from studyin_analytics.aggregator.consumer.rebuild_tables import (
    NOT_REBUILDABLE,
    REBUILDS,
    Rebuild,
    Recount,
    register,
)
from studyin_analytics.aggregator.consumer.sessions import Mark, Session

pytestmark = pytest.mark.unit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY0 = date(2026, 11, 30)
BASE_US = (datetime(2026, 11, 30, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
DAY_US = 86_400_000_000
USERS = ["t1:" + "a" * 32, "t1:" + "b" * 32, "t1:" + "c" * 32]


def _event(kind: str, time_us: int, user: str | None, n: int) -> EventRow:
    properties: dict[str, Any] = {
        "xp_awarded": {"xp_amount": n % 50},
        "api_request": {"duration_ms": 1.5 + n, "route": "/r", "method": "GET", "status_code": 200 + n % 300},
        "ai_coach_interaction": {"latency_ms": 10.0 + n, "tokens_in": n, "model": "m", "topic_category": "t"},
        "ai_coach_feedback": {"rating": n % 5},
    }.get(kind, {})
    return EventRow(
        uuid.UUID(int=n + 1),
        EPOCH + timedelta(microseconds=time_us),
        kind,
        user,
        None,
        properties,
        time_us,
    )


events_strategy = st.lists(
    st.tuples(
        st.sampled_from(
            ["material_view", "xp_awarded", "api_request", "ai_coach_interaction", "ai_coach_feedback"]
        ),
        st.integers(0, 3 * DAY_US - 1),
        st.sampled_from([*USERS, None]),
    ),
    max_size=60,
)
sessions_strategy = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.one_of(st.none(), st.integers(0, 3 * DAY_US - 1)),
        st.integers(0, 2 * DAY_US),
        st.floats(0, 200_000),
    ),
    max_size=10,
)


def _sessions(raw: list[tuple[str, int | None, int, float]]) -> list[tuple[str, Session]]:
    out = []
    for n, (user, start, length, duration) in enumerate(raw):
        session = Session()
        if start is not None:
            session.add_start(Mark(BASE_US + start, uuid.UUID(int=1000 + n)))
        end = BASE_US + (start or 0) + length
        session.add_end(Mark(end, uuid.UUID(int=2000 + n)), duration, 0, [], "completed")
        out.append((user, session))
    return out


def _rows(recount: Recount) -> dict[str, list[Any]]:
    return {
        name: sorted(rebuild.rows(recount), key=repr)  # type: ignore[misc]
        for name, rebuild in REBUILDS.items()
        if rebuild.rows is not None
    }


@settings(max_examples=40, deadline=None)
@given(events_strategy, sessions_strategy)
def test_days_rebuilt_one_by_one_add_up_to_all_at_once(
    raw_events: list[tuple[str, int, str | None]], raw_sessions: list[tuple[str, int | None, int, float]]
) -> None:
    events = [_event(kind, BASE_US + at, user, n) for n, (kind, at, user) in enumerate(raw_events)]
    sessions = _sessions(raw_sessions)
    days = [DAY0 + timedelta(days=d) for d in range(-1, 6)]  # study time may reach the day before
    by_day: dict[str, list[Any]] = {}
    for day in days:
        recount = Recount(day)
        recount.add([e for e in events if e.occurred_at.date() == day])
        for user, session in sessions:
            recount.add_session(user, session)
        for name, rows in _rows(recount).items():
            by_day.setdefault(name, []).extend(rows)
    everything = Recount(None)  # every key at once
    everything.add(events)
    for user, session in sessions:
        everything.add_session(user, session)
    whole = _rows(everything)
    assert {k: sorted(v, key=repr) for k, v in by_day.items()} == whole


def test_summary_counts_active_learners_per_hour() -> None:
    recount = Recount(DAY0)
    hour = BASE_US + 5 * 3_600_000_000
    recount.add(
        [
            _event("material_view", hour + 1, USERS[0], 1),
            _event("material_view", hour + 2, USERS[1], 2),
            _event("api_request", hour + 3, None, 3),
        ]
    )
    (row,) = recount.summary_rows()
    assert row[0] == datetime(2026, 11, 30, 5, tzinfo=UTC)
    assert row[1] == 3 and row[-1] == 2  # events, active_users
    assert row[-3] == 1  # api_requests


def test_tables_that_raw_events_cannot_rebuild_are_refused_with_the_reason() -> None:
    assert set(NOT_REBUILDABLE) == {"gamification_stats", "learning_sessions"}
    assert not set(NOT_REBUILDABLE) & set(REBUILDS)
    with pytest.raises(RebuildRefused, match="all-time per-learner state"):
        select_tables(["gamification_stats"])
    with pytest.raises(RebuildRefused, match="earliest start"):
        select_tables(["daily_activity_summary", "learning_sessions"])
    with pytest.raises(RebuildRefused, match="rebuildable: daily_activity_summary"):
        select_tables(["daily"])
    assert [r.table for r in select_tables(["hourly_analytics_summary", "ai_coach_metrics"])] == [
        "ai_coach_metrics",
        "hourly_analytics_summary",
    ]
    assert select_tables(None) == list(REBUILDS.values())


def test_a_rebuild_gives_rows_or_sql_and_registers_once() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Rebuild("t", "day", "date")
    with pytest.raises(ValueError, match="exactly one"):
        Rebuild("t", "day", "date", ("a",), Recount.ai_rows, "INSERT INTO t SELECT 1")
    with pytest.raises(ValueError, match="registered already"):
        register(REBUILDS["system_metrics"])
    daily = REBUILDS["daily_activity_summary"]
    assert daily.bounds(DAY0) == (DAY0, DAY0 + timedelta(days=1))
    hourly = REBUILDS["user_activity_hourly"]
    assert hourly.bounds(DAY0)[0] == datetime(2026, 11, 30, tzinfo=UTC)
    assert hourly.delete_sql == "DELETE FROM user_activity_hourly WHERE hour >= $1 AND hour < $2"
