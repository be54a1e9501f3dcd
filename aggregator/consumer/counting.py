"""Counting events into per-key rollup deltas, in memory (no I/O): :class:`Counts`.

The hot path of the aggregator: one pass over the events, a few dictionary updates each.
State lives in lists (the cheapest mutable record in CPython), whose positions are named by
the ``*At`` enums below and read through plain-int constants. :class:`.rollups.Rollup` adds
the merge into the tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import IntEnum
from typing import Any, Final

from ...instrumentation.events import MAX_SECONDS
from . import histogram
from .mapping import EventRow, dumps_json
from .sessions import RECORDED_START, Mark, Session

MINUTE_US = 60_000_000
HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000


class RollupInputError(ValueError):
    """An event field the rollups read has a value they cannot use (names event type and field)."""


class DailyAt(IntEnum):
    """Positions in a (user, day) list of :attr:`Counts.daily`."""

    SESSIONS = 0
    STUDY_SECONDS = 1
    VIEWED = 2
    COMPLETED = 3
    XP = 4
    EVENTS = 5


class HourlyAt(IntEnum):
    """Positions in a (user, hour) list of :attr:`Counts.hourly`."""

    EVENTS = 0
    SESSIONS = 1
    STUDY_SECONDS = 2
    VIEWED = 3
    COMPLETED = 4
    XP = 5
    AI_INTERACTIONS = 6


class GamificationAt(IntEnum):
    """Positions in a user's list of :attr:`Counts.gamification`.

    ``STREAK_KEY``: (time_us, event id bytes) of the streak event in force; ``LAST_ACTIVITY``: time_us.
    """

    XP = 0
    LEVEL = 1
    ACHIEVEMENTS = 2
    STREAK_KEY = 3
    CURRENT_STREAK = 4
    STREAK_EVENT_ID = 5
    LONGEST_STREAK = 6
    LAST_ACTIVITY = 7


class AiAt(IntEnum):
    """Positions in a (user, day) list of :attr:`Counts.ai`."""

    INTERACTIONS = 0
    TOKENS_IN = 1
    TOKENS_OUT = 2
    LATENCY_SUM = 3
    LATENCY_HIST = 4
    MODELS = 5
    TOPICS = 6
    FEEDBACK_COUNT = 7
    RATING_SUM = 8
    RATINGS = 9


class SystemAt(IntEnum):
    """Positions in a (minute, route, method) list of :attr:`Counts.system`."""

    REQUESTS = 0
    ERRORS = 1
    CLIENT_ERRORS = 2
    ERRORS_BY_TYPE = 3
    LATENCY_SUM = 4
    LATENCY_MIN = 5
    LATENCY_MAX = 6
    LATENCY_HIST = 7


# The counting loop indexes with these plain ints: a list indexed by an IntEnum member is
# about 5x slower to index (measured, CPython 3.11), by a module constant as fast as by a literal.
DAY_SESSIONS: Final = DailyAt.SESSIONS.value
DAY_STUDY_SECONDS: Final = DailyAt.STUDY_SECONDS.value
DAY_VIEWED: Final = DailyAt.VIEWED.value
DAY_COMPLETED: Final = DailyAt.COMPLETED.value
DAY_XP: Final = DailyAt.XP.value
DAY_EVENTS: Final = DailyAt.EVENTS.value

HOUR_EVENTS: Final = HourlyAt.EVENTS.value
HOUR_SESSIONS: Final = HourlyAt.SESSIONS.value
HOUR_STUDY_SECONDS: Final = HourlyAt.STUDY_SECONDS.value
HOUR_VIEWED: Final = HourlyAt.VIEWED.value
HOUR_COMPLETED: Final = HourlyAt.COMPLETED.value
HOUR_XP: Final = HourlyAt.XP.value
HOUR_AI_INTERACTIONS: Final = HourlyAt.AI_INTERACTIONS.value

GAME_XP: Final = GamificationAt.XP.value
GAME_LEVEL: Final = GamificationAt.LEVEL.value
GAME_ACHIEVEMENTS: Final = GamificationAt.ACHIEVEMENTS.value
GAME_STREAK_KEY: Final = GamificationAt.STREAK_KEY.value
GAME_CURRENT_STREAK: Final = GamificationAt.CURRENT_STREAK.value
GAME_STREAK_EVENT_ID: Final = GamificationAt.STREAK_EVENT_ID.value
GAME_LONGEST_STREAK: Final = GamificationAt.LONGEST_STREAK.value
GAME_LAST_ACTIVITY: Final = GamificationAt.LAST_ACTIVITY.value

AI_INTERACTIONS: Final = AiAt.INTERACTIONS.value
AI_TOKENS_IN: Final = AiAt.TOKENS_IN.value
AI_TOKENS_OUT: Final = AiAt.TOKENS_OUT.value
AI_LATENCY_SUM: Final = AiAt.LATENCY_SUM.value
AI_LATENCY_HIST: Final = AiAt.LATENCY_HIST.value
AI_MODELS: Final = AiAt.MODELS.value
AI_TOPICS: Final = AiAt.TOPICS.value
AI_FEEDBACK_COUNT: Final = AiAt.FEEDBACK_COUNT.value
AI_RATING_SUM: Final = AiAt.RATING_SUM.value
AI_RATINGS: Final = AiAt.RATINGS.value

SYS_REQUESTS: Final = SystemAt.REQUESTS.value
SYS_ERRORS: Final = SystemAt.ERRORS.value
SYS_CLIENT_ERRORS: Final = SystemAt.CLIENT_ERRORS.value
SYS_ERRORS_BY_TYPE: Final = SystemAt.ERRORS_BY_TYPE.value
SYS_LATENCY_SUM: Final = SystemAt.LATENCY_SUM.value
SYS_LATENCY_MIN: Final = SystemAt.LATENCY_MIN.value
SYS_LATENCY_MAX: Final = SystemAt.LATENCY_MAX.value
SYS_LATENCY_HIST: Final = SystemAt.LATENCY_HIST.value


# --- typed reads of event fields ---------------------------------------------------------------


def _bad(event_type: str, field: str, value: Any, expected: str) -> RollupInputError:
    return RollupInputError(
        f"event {event_type!r}: field {field!r} must be {expected}, got {type(value).__name__}"
    )


def _number(value: Any, field: str, event_type: str) -> float | None:
    """A value that is not an int or float: a string holding a number (as PostgreSQL's
    ``::numeric`` would take it), or an error naming the field. ``None`` if not finite."""
    if type(value) is str:
        try:
            number = float(value.strip())
        except ValueError:
            raise _bad(event_type, field, value, "a number") from None
        return number if math.isfinite(number) else None
    raise _bad(event_type, field, value, "a number")


def _int(properties: dict[str, Any], field: str, event_type: str, default: int = 0) -> int:
    """An integer field (floats truncate); absent, null or non-finite: ``default``."""
    value: Any = properties.get(field)
    kind = type(value)  # exact types: bool is not a number here, as in JSON
    if kind is int:
        return value  # type: ignore[no-any-return]
    if value is None:
        return default
    if kind is not float:
        value = _number(value, field, event_type)
        if value is None:
            return default
    return int(value) if math.isfinite(value) else default


def _float(properties: dict[str, Any], field: str, event_type: str) -> float:
    """A number field as float; absent, null or non-finite (stored as JSON null): 0."""
    value: Any = properties.get(field)
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else 0.0
    if kind is int:
        return float(value)
    if value is None:
        return 0.0
    number = _number(value, field, event_type)
    return 0.0 if number is None else number


def _text(value: Any, default: str) -> str:
    """A label: a string as it is, any other value as its JSON text (``default`` when absent or null)."""
    if type(value) is str:
        return value
    if value is None:
        return default
    return dumps_json(value)


def _material(value: Any) -> str | None:
    """An element of ``materials_touched`` as ``text[]`` holds it (JSON null: NULL)."""
    return None if value is None else _text(value, "")


def _count(counts: dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1


class Counts:
    """Per-key deltas of a set of new events (:class:`.rollups.Rollup` merges them into the tables).

    Keys are integers of the UTC day, hour and minute (``time_us // DAY_US`` ...), the
    same integer the raw row's time comes from. Count maps are dicts (histogram buckets as
    ints), JSON-encoded only when applied. The hourly dashboard summary is derived at apply
    time from the per-user hourly rows and the per-minute system rows, plus the events per
    type and hour, the only per-event count it needs of its own.
    """

    __slots__ = ("ai", "by_type", "daily", "gamification", "hourly", "sessions", "system")

    def __init__(self) -> None:
        self.daily: dict[tuple[str, int], list[Any]] = {}
        """(user, day) -> counters at :class:`DailyAt` positions"""
        self.hourly: dict[tuple[str, int], list[Any]] = {}
        """(user, hour) -> counters at :class:`HourlyAt` positions"""
        self.gamification: dict[str, list[Any]] = {}
        """user -> state at :class:`GamificationAt` positions"""
        self.ai: dict[tuple[str, int], list[Any]] = {}
        """(user, day) -> metrics at :class:`AiAt` positions"""
        self.system: dict[tuple[int, str, str], list[Any]] = {}
        """(minute, route, method) -> metrics at :class:`SystemAt` positions"""
        self.by_type: dict[tuple[int, str], int] = {}
        """(hour, event type) -> events, users or not"""
        self.sessions: dict[tuple[str, Any], Session] = {}
        """(user, session id) -> the earliest start and end of the session among these events"""

    @property
    def keys(self) -> int:
        """Rows this rollup will upsert, about (its size in memory is ~600 B per key)."""
        return (
            len(self.daily)
            + len(self.hourly)
            + len(self.gamification)
            + len(self.ai)
            + len(self.system)
            + len(self.sessions)
        )

    def add(self, rows: Iterable[EventRow]) -> None:
        """Count ``rows`` (new events, unique by id). Raises :class:`RollupInputError`, having
        possibly counted part of ``rows``: discard the accumulator then."""
        daily, hourly, gamification, by_type = self.daily, self.hourly, self.gamification, self.by_type
        for row in rows:
            event_type = row.event_type
            time_us = row.time_us
            hour = time_us // HOUR_US
            key = (hour, event_type)
            by_type[key] = by_type.get(key, 0) + 1
            if event_type == "api_request":
                self._request(row.properties, time_us)
            user = row.user_hash
            if user is None:
                continue
            day = time_us // DAY_US
            day_row = daily.get((user, day))
            if day_row is None:
                day_row = daily[(user, day)] = [0, 0.0, 0, 0, 0, 0]
            hour_row = hourly.get((user, hour))
            if hour_row is None:
                hour_row = hourly[(user, hour)] = [0, 0, 0.0, 0, 0, 0, 0]
            state = gamification.get(user)
            if state is None:
                state = gamification[user] = [0, 1, None, None, 0, None, 0, time_us]
            elif time_us > state[GAME_LAST_ACTIVITY]:
                state[GAME_LAST_ACTIVITY] = time_us
            day_row[DAY_EVENTS] += 1
            hour_row[HOUR_EVENTS] += 1
            if event_type == "api_request":
                continue
            if event_type == "material_view":
                day_row[DAY_VIEWED] += 1
                hour_row[HOUR_VIEWED] += 1
            elif event_type == "xp_awarded":
                xp = _int(row.properties, "xp_amount", event_type)
                day_row[DAY_XP] += xp
                hour_row[HOUR_XP] += xp
                state[GAME_XP] += xp
            elif event_type == "ai_coach_interaction":
                hour_row[HOUR_AI_INTERACTIONS] += 1
                self._coach(user, day, row.properties, event_type)
            elif event_type == "session_start":
                if row.session_id is not None:
                    self._session_start(row, user)
            elif event_type == "session_end":
                if row.session_id is not None:
                    self._session_end(row, user)
            elif event_type == "material_complete":
                day_row[DAY_COMPLETED] += 1
                hour_row[HOUR_COMPLETED] += 1
            elif event_type == "level_up":
                state[GAME_LEVEL] = max(state[GAME_LEVEL], _int(row.properties, "level", event_type, 1))
            elif event_type == "achievement_unlocked":
                if state[GAME_ACHIEVEMENTS] is None:
                    state[GAME_ACHIEVEMENTS] = set()
                state[GAME_ACHIEVEMENTS].add(_text(row.properties.get("achievement_id"), "None"))
            elif event_type == "ai_coach_feedback":
                self._coach(user, day, row.properties, event_type)
            elif event_type in ("streak_updated", "streak_broken"):
                self._streak(row, state)

    def _request(self, properties: dict[str, Any], time_us: int) -> None:
        duration = properties.get("duration_ms")
        if type(duration) is not float:
            duration = _float(properties, "duration_ms", "api_request")
        route, method, error = properties.get("route"), properties.get("method"), properties.get("error_type")
        key = (
            time_us // MINUTE_US,
            route if type(route) is str else _text(route, "None"),
            method if type(method) is str else _text(method, "_OTHER"),
        )
        metrics = self.system.get(key)
        if metrics is None:
            metrics = self.system[key] = [0, 0, 0, {}, 0.0, duration, duration, {}]
        metrics[SYS_REQUESTS] += 1
        if error is not None:
            metrics[SYS_ERRORS] += 1
            errors = metrics[SYS_ERRORS_BY_TYPE]
            error = _text(error, "")
            errors[error] = errors.get(error, 0) + 1
        elif 400 <= _int(properties, "status_code", "api_request") < 500:
            metrics[SYS_CLIENT_ERRORS] += 1
        metrics[SYS_LATENCY_SUM] += duration
        if duration < metrics[SYS_LATENCY_MIN]:
            metrics[SYS_LATENCY_MIN] = duration
        elif duration > metrics[SYS_LATENCY_MAX]:
            metrics[SYS_LATENCY_MAX] = duration
        buckets = metrics[SYS_LATENCY_HIST]
        bucket = histogram.bucket(duration)
        buckets[bucket] = buckets.get(bucket, 0) + 1

    def _coach(self, user: str, day: int, properties: dict[str, Any], event_type: str) -> None:
        metrics = self.ai.get((user, day))
        if metrics is None:
            metrics = self.ai[(user, day)] = [0, 0, 0, 0.0, {}, {}, {}, 0, 0, {}]
        if event_type == "ai_coach_interaction":
            latency = _float(properties, "latency_ms", event_type)
            metrics[AI_INTERACTIONS] += 1
            metrics[AI_TOKENS_IN] += _int(properties, "tokens_in", event_type)
            metrics[AI_TOKENS_OUT] += _int(properties, "tokens_out", event_type)
            metrics[AI_LATENCY_SUM] += latency
            _count(metrics[AI_LATENCY_HIST], histogram.bucket(latency))
            _count(metrics[AI_MODELS], _text(properties.get("model"), "None"))
            _count(metrics[AI_TOPICS], _text(properties.get("topic_category"), "None"))
        else:
            rating = _int(properties, "rating", event_type)
            metrics[AI_FEEDBACK_COUNT] += 1
            metrics[AI_RATING_SUM] += rating
            _count(metrics[AI_RATINGS], rating)

    def _session(self, row: EventRow, user: str) -> Session:
        key = (user, row.session_id)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = Session()
        return session

    def _session_start(self, row: EventRow, user: str) -> None:
        self._session(row, user).add_start(Mark(row.time_us, row.event_id))

    def _session_end(self, row: EventRow, user: str) -> None:
        properties = row.properties
        duration = _float(properties, "duration_s", "session_end")
        if duration > MAX_SECONDS:  # its study time would be split over that many hours
            raise RollupInputError(
                f"event 'session_end': field 'duration_s' must be at most {MAX_SECONDS} s, got {duration:g}"
            )
        materials = properties.get("materials_touched")
        session = self._session(row, user)
        recorded_start = properties.get(RECORDED_START)
        if type(recorded_start) is int:  # carried by the session's own span (see .sessions)
            session.add_start(Mark(recorded_start, row.event_id))
        session.add_end(
            Mark(row.time_us, row.event_id),
            max(duration, 0.0),
            _int(properties, "xp_earned", "session_end"),
            [_material(m) for m in materials] if isinstance(materials, (list, tuple)) else [],
            _text(properties.get("end_reason"), "completed"),
        )

    def _streak(self, row: EventRow, state: list[Any]) -> None:
        updated = row.event_type == "streak_updated"
        properties = row.properties
        days = _int(properties, "streak_days", row.event_type) if updated else 0
        reported = days if updated else _int(properties, "previous_streak_days", row.event_type)
        key = (row.time_us, row.event_id.bytes)
        if (
            state[GAME_STREAK_KEY] is None or key > state[GAME_STREAK_KEY]
        ):  # last writer wins on (time, event id)
            state[GAME_STREAK_KEY], state[GAME_CURRENT_STREAK], state[GAME_STREAK_EVENT_ID] = (
                key,
                days,
                row.event_id,
            )
        state[GAME_LONGEST_STREAK] = max(state[GAME_LONGEST_STREAK], reported)
