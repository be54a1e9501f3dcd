"""Server-free checks of the rollup state positions (counting.py) against the delta tables' columns."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from studyin_analytics.aggregator.consumer import counting, rollup_sql
from studyin_analytics.aggregator.consumer.mapping import EventRow
from studyin_analytics.aggregator.consumer.rollups import Rollup

ENUMS = {
    "DAY_": counting.DailyAt,
    "HOUR_": counting.HourlyAt,
    "GAME_": counting.GamificationAt,
    "AI_": counting.AiAt,
    "SYS_": counting.SystemAt,
}


def test_positions_are_dense_and_their_constants_match() -> None:
    for prefix, enum in ENUMS.items():
        assert sorted(int(member) for member in enum) == list(range(len(enum))), enum
        for member in enum:
            constant = getattr(counting, prefix + member.name)
            assert type(constant) is int and constant == member.value, (prefix, member)


def test_daily_and_hourly_positions_follow_their_table_columns() -> None:
    """The delta rows are the key followed by the state list: positions are column order."""
    assert rollup_sql.DAILY.columns[2:] == (
        "sessions",
        "study_seconds",
        "materials_viewed",
        "materials_completed",
        "xp",
        "events",
    )
    assert [m.name for m in counting.DailyAt] == [
        "SESSIONS",
        "STUDY_SECONDS",
        "VIEWED",
        "COMPLETED",
        "XP",
        "EVENTS",
    ]
    assert len(rollup_sql.HOURLY.columns) - 2 == len(counting.HourlyAt)
    assert len(rollup_sql.AI.columns) - 2 == len(counting.AiAt)
    assert len(rollup_sql.SYSTEM.columns) - 3 == len(counting.SystemAt)


def _row(event_type: str, properties: dict[str, object], user: str | None = "k1:" + "a" * 64) -> EventRow:
    time_us = 1_700_000_000_000_000
    return EventRow(
        uuid.uuid4(), datetime.fromtimestamp(time_us / 1e6, UTC), event_type, user, None, properties, time_us
    )


def test_counting_fills_the_named_positions() -> None:
    rollup = Rollup()
    rollup.add(
        [
            _row("material_view", {}),
            _row("xp_awarded", {"xp_amount": 7}),
            _row("ai_coach_interaction", {"latency_ms": 12.0, "tokens_in": 3, "tokens_out": 4}),
            _row(
                "api_request", {"duration_ms": 5.0, "route": "/r", "method": "GET", "status_code": 404}, None
            ),
        ]
    )
    (day,) = rollup.daily.values()
    assert day[counting.DAY_VIEWED] == 1 and day[counting.DAY_XP] == 7 and day[counting.DAY_EVENTS] == 3
    (hour,) = rollup.hourly.values()
    assert hour[counting.HOUR_AI_INTERACTIONS] == 1 and hour[counting.HOUR_EVENTS] == 3
    (game,) = rollup.gamification.values()
    assert game[counting.GAME_XP] == 7 and game[counting.GAME_LEVEL] == 1
    (ai,) = rollup.ai.values()
    assert ai[counting.AI_TOKENS_IN] == 3 and ai[counting.AI_TOKENS_OUT] == 4
    (system,) = rollup.system.values()
    assert system[counting.SYS_REQUESTS] == 1 and system[counting.SYS_CLIENT_ERRORS] == 1
    assert system[counting.SYS_LATENCY_MIN] == system[counting.SYS_LATENCY_MAX] == 5.0
