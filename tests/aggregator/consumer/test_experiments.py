"""Experiment rollups: the per-variant sums equal the brute-force ones, whatever order, duplication,
batching or crash (real Redis bus, real aggregator, real PostgreSQL)."""

from __future__ import annotations

import random
import time

import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.custom import registry
from studyin_analytics.aggregator.experiments import store
from studyin_analytics.aggregator.experiments.definitions import ExperimentDefinition
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.custom_events import CASE, case_schema
from tests.support.experiments import (
    DAY_NS,
    build,
    definition,
    entries,
    reference_day_sums,
    reference_sums,
    stored_day_sums,
    stored_sums,
)
from tests.support.workload import push

CUSTOM = (f"custom:{CASE}",)
"""The custom-event-count metric the sums test's definition names (a guardrail)."""


async def _define(settings: Settings, key: str, **extra: object) -> None:
    conn = await connect(settings)
    try:
        await store.create(conn, ExperimentDefinition.model_validate(definition(key, **extra)), "test")
    finally:
        await conn.close()


async def _drain(settings: Settings) -> int:
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=60)
    return totals.events_inserted


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sums_equal_brute_force_under_any_arrival(migrated: Settings, seed: int) -> None:
    rng = random.Random(seed)
    settings = migrated.with_overrides(batch_size=rng.choice([3, 11, 50]))
    pseudonymizer = Pseudonymizer.from_settings(settings)
    users = [pseudonymizer.pseudonymize(f"learner-{seed}-{i}") for i in range(40)]
    start_ns = (time.time_ns() - 30 * DAY_NS) // 1000 * 1000
    wl = build(rng, users, "coach-prompt", start_ns, custom_type=CASE)
    guardrails = ["completion_rate", "sessions", "xp", "ai_coach_rating", *CUSTOM]
    await _define(settings, "coach-prompt", guardrail_metrics=guardrails)
    conn = await connect(settings)
    try:
        await registry.register(conn, CASE, "1-0-0", case_schema(), "test")
    finally:
        await conn.close()
    stream = stream_keys(settings)[0]
    batches = entries(rng, wl.spans, per_entry=rng.randint(1, 7))
    # Shuffled events (exposures after the events that follow them, later exposures first), in
    # several aggregator lives (a crash between them changes nothing), a third of entries twice.
    cut = len(batches) // 2
    push(settings.redis_url or "", stream, batches[:cut] + batches[: cut // 3])
    inserted = await _drain(settings)
    push(settings.redis_url or "", stream, batches[cut:] + batches[::3])
    inserted += await _drain(settings)
    assert inserted == len(wl.events)
    conn = await connect(settings)
    try:
        expected = reference_sums(wl.events, custom=CUSTOM)
        assert expected, "the workload exposes learners"
        assert any(k[3] == CUSTOM[0] and v[2] > 0 for k, v in expected.items()), "custom events count"
        assert await stored_sums(conn, "coach-prompt") == expected
        # Per day: the running totals of the day rows equal the brute-force sums at each day's end.
        days = range(start_ns // DAY_NS - 6, start_ns // DAY_NS + 27)
        by_day = reference_day_sums(wl.events, days, custom=CUSTOM)
        assert await stored_day_sums(conn, "coach-prompt", days) == by_day
        assert {k[:4]: v for k, v in by_day.items() if k[4] == days[-1]} == expected
    finally:
        await conn.close()


async def test_the_comparison_has_teeth(migrated: Settings) -> None:
    """One event more for an exposed learner moves the sums away from a reference without it."""
    rng = random.Random(7)
    pseudonymizer = Pseudonymizer.from_settings(migrated)
    users = [pseudonymizer.pseudonymize(f"teeth-{i}") for i in range(10)]
    start_ns = (time.time_ns() - 30 * DAY_NS) // 1000 * 1000
    wl = build(rng, users, "teeth", start_ns)
    await _define(migrated, "teeth")
    push(migrated.redis_url or "", stream_keys(migrated)[0], entries(rng, wl.spans))
    await _drain(migrated)
    conn = await connect(migrated)
    try:
        expected = reference_sums(wl.events)
        assert await stored_sums(conn, "teeth") == expected
        counted = next(
            i
            for i, ev in enumerate(wl.events)
            if ev.kind == "xp_awarded" and reference_sums(wl.events[:i] + wl.events[i + 1 :]) != expected
        )
        missing_one = reference_sums(wl.events[:counted] + wl.events[counted + 1 :])
        assert await stored_sums(conn, "teeth") != missing_one
    finally:
        await conn.close()


async def test_exposures_of_unknown_experiments_or_variants_count_nothing(migrated: Settings) -> None:
    rng = random.Random(5)
    pseudonymizer = Pseudonymizer.from_settings(migrated)
    users = [pseudonymizer.pseudonymize(f"unknown-{i}") for i in range(6)]
    start_ns = (time.time_ns() - 30 * DAY_NS) // 1000 * 1000
    await _define(migrated, "known")
    wl = build(rng, users, "not-defined", start_ns)
    forged = build(rng, users, "known", start_ns)
    for ev, span in zip(forged.events, forged.spans, strict=True):
        if ev.kind == "experiment_exposure":
            span.events[0].attributes["studyin.experiment.variant"] = "forged"
    push(migrated.redis_url or "", stream_keys(migrated)[0], entries(rng, wl.spans + forged.spans))
    await _drain(migrated)
    conn = await connect(migrated)
    try:
        assert await conn.fetchval("SELECT count(*) FROM experiment_learners") == 0
        assert await stored_sums(conn, "known") == {}
    finally:
        await conn.close()
