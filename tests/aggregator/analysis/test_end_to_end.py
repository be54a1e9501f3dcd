"""Funnels and retention from the real aggregator into real PostgreSQL, read as the API role.

Learner paths are sent as spans on the bus, out of order and partly twice, in two phases; the
store loads phase 1, then refreshes on the commit-ordered watermark after phase 2. Both the
incrementally refreshed store and a store loaded at once give the brute-force answers computed
from the generated events.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.analysis.definitions import (
    FunnelDefinition,
    FunnelStep,
    RetentionDefinition,
    ReturnEvent,
)
from studyin_analytics.aggregator.analysis.funnels import learner_funnel
from studyin_analytics.aggregator.analysis.loader import AnalysisStore
from studyin_analytics.aggregator.analysis.retention import retention_counts
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.mapping import event_id
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation import semconv
from tests.support.analysis.reference import US, Event, funnel_truth, learner_paths, retention_truth
from tests.support.workload.build import push

NOW = datetime.now(UTC)


def _events() -> list[Event]:
    """Learner paths moved to end an hour ago, within raw retention."""
    events = learner_paths(5, learners=60, weeks=4)
    shift = int((NOW - timedelta(hours=1)).timestamp() * US) - max(e.time_us for e in events)
    oldest = int((NOW - timedelta(days=80)).timestamp() * US)
    moved = [Event(e.user_hash, e.time_us + shift, e.event_type, e.event_id, e.props) for e in events]
    return [e for e in moved if e.time_us >= oldest]


def _spans(events: list[Event], rng: random.Random) -> list[SpanRecord]:
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
                {"user.hash": e.user_hash},
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
            assert await live.refresh(api) > 0
            push(settings.redis_url or "", stream, second + first[::2] + second[::3])
            await aggregator.drain(timeout_s=60)
        await live.refresh(api)
        assert await live.refresh(api, force=True) == 0  # nothing is read twice
        fresh = AnalysisStore()
        await fresh.refresh(api)
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
