"""The store's refresh against PostgreSQL: raw retention applied by the UTC day, as the aggregator
drops partitions, so the store holds what the raw table holds and a refresh that reads nothing new
changes nothing (no rows rewritten, the generation kept: the saved funnels' answers stay warm)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from studyin_analytics.aggregator.analysis.loader import AnalysisStore, retention_cutoff_us
from studyin_analytics.aggregator.analysis.periods import US
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import ensure_partitions
from studyin_analytics.exporter.admission import oldest_day

INSERT = """
INSERT INTO analytics_events (event_id, occurred_at, event_type, user_hash, properties)
VALUES ($1, $2, 'material_view', $3, '{}'::jsonb)
"""


def test_the_cutoff_is_midnight_utc_of_the_oldest_retained_day() -> None:
    now = datetime(2026, 12, 4, 18, 30, 5, tzinfo=UTC)
    cutoff = retention_cutoff_us(90, now.timestamp())
    assert cutoff == int(datetime(2026, 9, 5, tzinfo=UTC).timestamp()) * US
    assert datetime.fromtimestamp(cutoff / US, UTC).date() == oldest_day(90, now.date())
    # constant all day long: it moves once a day, not with every refresh
    assert retention_cutoff_us(90, (now + timedelta(hours=5)).timestamp()) == cutoff


async def test_a_refresh_keeps_the_oldest_retained_day_and_a_quiet_one_changes_nothing(
    migrated: Settings,
) -> None:
    days = 3
    cutoff = datetime.fromtimestamp(retention_cutoff_us(days) / US, UTC)
    times = {
        "before": cutoff - timedelta(seconds=1),  # in a partition the aggregator drops
        "first second": cutoff + timedelta(seconds=1),  # older than now - 3 days, still stored
        "now": datetime.now(UTC) - timedelta(minutes=1),
    }
    admin = await connect(migrated)
    api = await connect(migrated, "api")
    try:
        await ensure_partitions(admin, {t.date() for t in times.values()}, set())
        for name, moment in times.items():
            await admin.execute(INSERT, uuid.uuid4(), moment, f"learner-{name}")
        store = AnalysisStore(max_staleness_s=0, retention_days=days)
        deadline = time.monotonic() + 90
        await store.refresh(api, force=True)
        while store.watermark is None or len(store.store.learners.values) < len(times):
            # a row is readable once every older transaction on the (shared) server has ended
            assert time.monotonic() < deadline, "the rows never became readable"
            await asyncio.sleep(0.2)
            await store.refresh(api, force=True)
        kept = sorted(store.store.learners.values[c] for c in set(store.store.learner.tolist()))
        assert kept == ["learner-first second", "learner-now"]
        generation, columns = store.generation, store.store.columns
        for _ in range(3):
            assert await store.refresh(api, force=True) == 0
        assert store.generation == generation
        assert store.store.columns is columns  # not rewritten
    finally:
        await api.close()
        await admin.close()
