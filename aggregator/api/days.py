"""Days and time zones of the query API's reads: windows, heatmap ranges, streaks, intensity."""

from __future__ import annotations

import logging
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import asyncpg

_log = logging.getLogger("studyin_analytics.aggregator.api.app")

MAX_HEATMAP_DAYS = 366
HEATMAP_DEFAULT_DAYS = 365


def today() -> date:
    """Today in UTC."""
    return datetime.now(UTC).date()


def utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@lru_cache(maxsize=1)
def python_time_zones() -> frozenset[str]:
    """The IANA names Python knows, and ``UTC``."""
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


async def supported_time_zones(pool: asyncpg.Pool) -> frozenset[str]:
    """The IANA names both Python and PostgreSQL know (the heatmap needs both); Python's alone
    if the database cannot say."""
    try:
        names = {r[0] for r in await pool.fetch("SELECT name FROM pg_timezone_names", timeout=10)}
    except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError) as exc:
        _log.warning("cannot read PostgreSQL's time zones (%s): offering Python's", type(exc).__name__)
        return python_time_zones()
    return python_time_zones() & (names | {"UTC"})


def current_streak(reported: int | None, as_of: datetime | None, today: date) -> int:
    """The streak the app last reported, or 0 if it was not extended yesterday or today (UTC).

    ``gamification_stats`` keeps the last reported value; a learner who stopped studying a
    week ago has no current streak, whatever was reported then.
    """
    if not reported or as_of is None:
        return 0
    return reported if as_of.astimezone(UTC).date() >= today - timedelta(days=1) else 0


def days_from(day: date, days: int) -> date:
    """``day`` moved by ``days``, stopping at the first or last day a date can be."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


def heatmap_range(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The heatmap's days: as given, or 365 days from the one given, or the 365 ending today.

    Any date is a valid ``start`` or ``end`` on its own (the year 1 included: a default computed
    from it stops at the first day a date can be); only the two together can be inconsistent.
    """
    span = HEATMAP_DEFAULT_DAYS - 1
    if start is not None and end is not None:
        return start, end
    if start is not None:
        return start, days_from(start, span)
    last = end if end is not None else today
    return days_from(last, -span), last


def intensity_level(minutes: float) -> int:
    """Heatmap intensity: 0 none, 1 under 15 min, 2 under 30, 3 under 60, 4 an hour or more."""
    if minutes <= 0:
        return 0
    if minutes < 15:
        return 1
    if minutes < 30:
        return 2
    if minutes < 60:
        return 3
    return 4
