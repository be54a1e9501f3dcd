"""Server-free unit tests of the query API's day arithmetic (aggregator/api/days.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studyin_analytics.aggregator.api.days import (
    HEATMAP_DEFAULT_DAYS,
    current_streak,
    days_from,
    heatmap_range,
    intensity_level,
    python_time_zones,
    utc_midnight,
)

TODAY = date(2026, 11, 25)


@pytest.mark.parametrize(
    ("minutes", "level"),
    [
        (-1.0, 0),
        (0.0, 0),
        (0.001, 1),
        (14.999, 1),
        (15.0, 2),
        (29.9, 2),
        (30.0, 3),
        (59.9, 3),
        (60.0, 4),
        (1e9, 4),
    ],
)
def test_intensity_levels_have_the_documented_bounds(minutes: float, level: int) -> None:
    assert intensity_level(minutes) == level


def test_heatmap_range_defaults() -> None:
    span = timedelta(days=HEATMAP_DEFAULT_DAYS - 1)
    assert heatmap_range(None, None, TODAY) == (TODAY - span, TODAY)
    assert heatmap_range(TODAY, None, TODAY) == (TODAY, TODAY + span)
    assert heatmap_range(None, TODAY, date(2030, 1, 1)) == (TODAY - span, TODAY)
    assert heatmap_range(TODAY, TODAY, TODAY) == (TODAY, TODAY)


@given(st.dates(), st.dates())
def test_heatmap_range_from_one_date_alone_never_overflows(start: date, today: date) -> None:
    first, last = heatmap_range(start, None, today)
    assert first == start and first <= last
    first, last = heatmap_range(None, start, today)
    assert last == start and first <= last


def test_days_from_stops_at_the_ends_of_the_calendar() -> None:
    assert days_from(date.max, 1) == date.max
    assert days_from(date.min, -1) == date.min
    assert days_from(TODAY, 1) == date(2026, 11, 26)


def test_current_streak_needs_an_extension_yesterday_or_today() -> None:
    yesterday_late = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
    assert current_streak(5, yesterday_late, TODAY) == 5
    assert current_streak(5, yesterday_late - timedelta(days=1), TODAY) == 0
    assert current_streak(0, yesterday_late, TODAY) == 0
    assert current_streak(None, yesterday_late, TODAY) == 0
    assert current_streak(3, None, TODAY) == 0


def test_utc_midnight_and_zones() -> None:
    assert utc_midnight(TODAY) == datetime(2026, 11, 25, tzinfo=UTC)
    zones = python_time_zones()
    assert "UTC" in zones and "Europe/Berlin" in zones
