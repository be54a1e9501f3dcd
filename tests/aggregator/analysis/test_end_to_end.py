"""Funnels and retention from the real aggregator into real PostgreSQL, read as the API role.

Learner paths are sent as spans on the bus, out of order and partly twice, in two phases; the
store loads phase 1, then refreshes on the commit-ordered watermark after phase 2. Both the
incrementally refreshed store and a store loaded at once give the brute-force answers computed
from the generated events.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.analysis.definitions import (
    FunnelDefinition,
    FunnelStep,
    RetentionDefinition,
    ReturnEvent,
)
from studyin_analytics.aggregator.analysis.funnels import learner_funnel
from studyin_analytics.aggregator.analysis.loader import AnalysisStore, retention_cutoff_us
from studyin_analytics.aggregator.analysis.retention import retention_counts
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.mapping import event_id
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation import semconv
from tests.support.analysis.reference import US, Event, funnel_truth, learner_paths, retention_truth
from tests.support.analysis.rotation import rotated
from tests.support.workload.build import push

NOW = datetime.now(UTC)


def _events() -> list[Event]:
    """Learner paths moved to end an hour ago, within raw retention."""
    events = learner_paths(5, learners=60, weeks=4)
    shift = int((NOW - timedelta(hours=1)).timestamp() * US) - max(e.time_us for e in events)
    oldest = int((NOW - timedelta(days=80)).timestamp() * US)
    moved = [Event(e.user_hash, e.time_us + shift, e.event_type, e.event_id, e.props) for e in events]
    return [e for e in moved if e.time_us >= oldest]


def _spans(events: list[Event], rng: random.Random, links: dict[str, str] | None = None) -> list[SpanRecord]:
    """One span per event (ids as the aggregator makes them); ``links``: each ``user.previous_hash``."""
    spans = []
    for i, e in enumerate(events):
        trace, span = rng.randbytes(16), rng.randbytes(8)
        events[i] = Event(e.user_hash, e.time_us, e.event_type, event_id(trace, span, 0), e.props)
        attributes = {semconv.FIELD_ATTRIBUTES[k]: v for k, v in e.props.items()}
        ns = e.time_us * 1000
        spans.append(
            SpanRecord(
                trace,
                span,
                None,
                "studyin.event",
                wire.SPAN_KIND_INTERNAL,
                ns - 1000,
                ns,
                0,
                {"user.hash": e.user_hash}
                | ({"user.previous_hash": links[e.user_hash]} if links and e.user_hash in links else {}),
                [EventRecord(semconv.event_name(e.event_type), ns, attributes)],
                {"service.name": "e2e"},
            )
        )
    return spans


def _entries(spans: list[SpanRecord]) -> list[dict[object, object]]:
    return [
        wire.entry_fields(wire.encode_records(spans[i : i + 25]), len(spans[i : i + 25]))
        for i in range(0, len(spans), 25)
    ]


async def _refreshed(store: AnalysisStore, api: asyncpg.Connection, rows: int, timeout_s: float = 90) -> None:
    """Refresh until the store holds ``rows`` rows: a row becomes readable once every older
    transaction on the whole (shared) server has ended, which other work can hold back a while."""
    deadline = time.monotonic() + timeout_s
    await store.refresh(api, force=True)
    while len(store.store) < rows:
        assert time.monotonic() < deadline, f"store has {len(store.store)} of {rows} rows"
        await asyncio.sleep(0.2)
        await store.refresh(api, force=True)


async def test_funnels_and_retention_through_the_aggregator_equal_the_brute_force(migrated: Settings) -> None:
    settings = migrated.with_overrides(batch_size=5)
    rng = random.Random(1)
    events = _events()
    spans = _spans(events, rng)
    rng.shuffle(spans)
    first, second = _entries(spans[: len(spans) * 3 // 5]), _entries(spans[len(spans) * 3 // 5 :])
    stream = stream_keys(settings)[0]
    live = AnalysisStore(max_staleness_s=0)
    api = await connect(settings, "api")
    try:
        push(settings.redis_url or "", stream, first[::-1] + first[::4])
        async with Aggregator(settings) as aggregator:
            await aggregator.drain(timeout_s=60)
            await _refreshed(live, api, 1)
            push(settings.redis_url or "", stream, second + first[::2] + second[::3])
            await aggregator.drain(timeout_s=60)
        await _refreshed(live, api, len(events))
        assert await live.refresh(api, force=True) == 0  # nothing is read twice
        fresh = AnalysisStore()
        await _refreshed(fresh, api, len(events))
    finally:
        await api.close()
    assert len(live.store) == len(fresh.store) == len(events)
    start = NOW - timedelta(days=81)
    funnel = FunnelDefinition(
        steps=(
            FunnelStep(event="session_start"),
            FunnelStep(event="material_view"),
            FunnelStep(event="material_progress", optional=True),
            FunnelStep(event="material_complete"),
            FunnelStep(event="xp_awarded", within_s=1),
        ),
        start=start,
        end=NOW,
    )
    truth = funnel_truth(funnel, events)
    for store in (live.store, fresh.store):
        lf = learner_funnel(store, funnel)
        assert sorted(store.learners.values[c] for c in lf.learners) == sorted(truth)
        assert [int(x) for x in lf.reached.sum(axis=1)] == [
            sum(t.reached[s] for t in truth.values()) for s in range(5)
        ]
    retention = RetentionDefinition(
        start=start.date(),
        cohorts=12,
        period="week",
        periods=11,
        return_event=ReturnEvent(kind="session", min_session_minutes=5),
        metric="study_minutes",
        timezone="Europe/Berlin",
    )
    sizes, retained, _ = retention_truth(retention, events)
    for store in (live.store, fresh.store):
        counts = retention_counts(store, retention)
        assert list(counts.sizes) == sizes and counts.retained.tolist() == retained
    assert sum(sizes) > 0 and any(row[1] for row in retained)


async def test_a_key_rotation_and_raw_retention_through_the_aggregator(migrated: Settings) -> None:
    """Learners whose later events carry a new pseudonym (linked by ``user.previous_hash``) and a store
    that forgets rows before the 40 days of raw retention (from midnight UTC, as the partitions are
    dropped): one learner stays one, cohorts start at the first activity."""
    settings = migrated.with_overrides(batch_size=20)
    rng = random.Random(2)
    cutoff_us = retention_cutoff_us(40, NOW.timestamp())
    hour = 3600 * US
    events = [e for e in _events() if abs(e.time_us - cutoff_us) > hour]  # none at the boundary
    moved, links = rotated(events, 2)
    spans = _spans(moved, rng, links)
    rng.shuffle(spans)
    entries = _entries(spans)
    push(settings.redis_url or "", stream_keys(settings)[0], entries + entries[::3])
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    store = AnalysisStore(retention_days=40)
    api = await connect(settings, "api")
    try:
        await _refreshed(store, api, sum(e.time_us >= cutoff_us for e in moved))
        stored = {
            r["user_hash"]: r["previous_hash"] for r in await api.fetch("SELECT * FROM analysis_learners")
        }
    finally:
        await api.close()
    assert {k: v for k, v in stored.items() if v is not None} == links
    plain = [
        Event(links.get(e.user_hash, e.user_hash), e.time_us, e.event_type, e.event_id, e.props)
        for e in moved
    ]
    assert len(store.store) == sum(e.time_us >= cutoff_us for e in plain) < len(plain)
    funnel = FunnelDefinition(
        steps=(FunnelStep(event="material_view"), FunnelStep(event="material_complete")),
        start=NOW - timedelta(days=39),
        end=NOW,
    )
    truth = funnel_truth(funnel, plain)
    lf = learner_funnel(store.store, funnel)
    assert sorted(store.store.learners.values[c] for c in lf.learners) == sorted(truth)
    assert [int(x) for x in lf.reached.sum(axis=1)] == [
        sum(t.reached[s] for t in truth.values()) for s in range(2)
    ]
    retention = RetentionDefinition(
        start=(NOW - timedelta(days=81)).date(),
        cohorts=12,
        period="week",
        periods=11,
        return_event=ReturnEvent(kind="material_complete"),
        timezone="Europe/Berlin",
    )
    firsts: dict[str, int] = {}
    for e in plain:
        firsts[e.user_hash] = min(firsts.get(e.user_hash, e.time_us), e.time_us)
    markers = [Event(u, t, "level_up", plain[0].event_id, {}) for u, t in firsts.items()]
    sizes, retained, _ = retention_truth(retention, [e for e in plain if e.time_us >= cutoff_us] + markers)
    counts = retention_counts(store.store, retention)
    assert list(counts.sizes) == sizes and counts.retained.tolist() == retained
    assert sum(sizes[:5]) > 0  # cohorts older than the store's rows
