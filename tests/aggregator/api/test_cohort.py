"""The cohort overview suppresses days of 1 to k-1 learners: hypothesis over rollups and k, through the API.

The rollup rows are written directly (as the aggregator would have): per day a number of
learners in ``daily_activity_summary`` and the day's hourly totals; the API must show a day's
figures only when its learners are 0 or at least k, a peak hourly count only when it is not
1..k-1, and totals over the shown days only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.analysis.suppression import small
from studyin_analytics.aggregator.api.cohort import COHORT_PATH
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect
from tests.support.analysis.loading import opened_api
from tests.support.api import STAFF

DAYS = 6


async def _write(settings_: Settings, learners: list[int], peaks: list[int]) -> None:
    conn = await connect(settings_)
    try:
        await conn.execute("TRUNCATE daily_activity_summary, daily_learners, hourly_analytics_summary")
        today = datetime.now(UTC).date()
        for back, (n, peak) in enumerate(zip(learners, peaks, strict=True)):
            day = today - timedelta(days=back)
            await conn.executemany(
                "INSERT INTO daily_activity_summary (user_hash, day, sessions, xp, events) "
                "VALUES ($1, $2, 1, 10, 1)",
                [(f"t1:{u:032x}", day) for u in range(n)],
            )
            # As the aggregator keeps it with those rows (exact against the truth: tests/support/workload).
            await conn.execute("INSERT INTO daily_learners (day, learners) VALUES ($1, $2)", day, n)
            hour = datetime.combine(day, time(1), UTC)
            await conn.execute(
                "INSERT INTO hourly_analytics_summary (hour, events, active_users, sessions, xp) "
                "VALUES ($1, $2, $3, $5, $4)",
                hour,
                max(n, 1),
                min(peak, n),
                10 * n,
                n,
            )
    finally:
        await conn.close()


async def _check(settings_: Settings, learners: list[int], peaks: list[int], k: int) -> None:
    await _write(settings_, learners, peaks)
    async with opened_api(settings_.with_overrides(min_cohort_size=k)) as api:
        response = await api.client.get(
            COHORT_PATH, params={"days": DAYS}, headers=api.auth(STAFF, roles=["staff"])
        )
        assert response.status_code == 200, response.text
        body = response.json()
    assert body["min_group_size"] == k
    by_day = {d["day"]: d for d in body["daily"]}
    today = datetime.now(UTC).date()
    shown_xp = 0
    for back, (n, peak) in enumerate(zip(learners, peaks, strict=True)):
        day = by_day[(today - timedelta(days=back)).isoformat()]
        if small(n, k):
            assert day["suppressed"]
            assert all(v is None for name, v in day.items() if name not in ("day", "suppressed"))
            continue
        assert not day["suppressed"] and day["learners"] == n and day["xp"] == 10 * n
        shown_xp += 10 * n
        shown_peak = min(peak, n)
        assert day["peak_hourly_active_users"] == (None if small(shown_peak, k) else shown_peak)
    assert body["xp"] == shown_xp and body["sessions"] == shown_xp // 10
    assert body["suppressed_days"] == sum(small(n, k) for n in learners)


def test_no_day_under_k_learners_leaves_the_cohort_overview(migrated: Settings) -> None:
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        learners=st.lists(st.integers(0, 9), min_size=DAYS, max_size=DAYS),
        peaks=st.lists(st.integers(0, 9), min_size=DAYS, max_size=DAYS),
        k=st.integers(2, 6),
    )
    def check(learners: list[int], peaks: list[int], k: int) -> None:
        asyncio.run(_check(migrated, learners, peaks, k))

    check()
