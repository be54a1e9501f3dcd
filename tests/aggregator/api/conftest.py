"""Fixtures of the query API tests (their builders: tests/support/api.py; the browser tests' helpers:
tests/support/browser.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from playwright.async_api import Browser, async_playwright

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import free_port
from studyin_analytics.aggregator.devtools.simulation import build_backend, simulate_students
from studyin_analytics.aggregator.experiments import store
from studyin_analytics.aggregator.experiments.definitions import ExperimentDefinition
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from tests.support.api import Api, open_api
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, DASHBOARD_LEARNER, DASHBOARD_OTHER
from tests.support.experiments import definition

Pipeline = tuple[Settings, StudyInTracker, TracerProvider]

# The experiments view's per-variant sums: a biased split (400 against 520 learners under 1:1 weights).
EXPERIMENT_ROWS = [
    # variant, metric, n, successes, sum, sum of squares
    ("control", "xp", 400, 0, 4000, 400 * (100 + 25)),
    ("treatment", "xp", 520, 0, 5720, 520 * (121 + 25)),
    ("control", "sessions", 400, 0, 800, 400 * 5),
    ("treatment", "sessions", 520, 0, 1040, 520 * 5),
    ("control", "completion_rate", 400, 200, 200, 200),
    ("treatment", "completion_rate", 520, 286, 286, 286),
]


@pytest.fixture
async def api(migrated: Settings) -> AsyncIterator[Api]:
    async for value in open_api(migrated):
        yield value


@pytest.fixture
def export_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Parquet and Iceberg exports (of the learner endpoints) into the test's own directory."""
    monkeypatch.setenv("STUDYIN_ANALYTICS_EXPORT_PARQUET_DIR", str(tmp_path / "parquet"))
    monkeypatch.setenv("STUDYIN_ANALYTICS_EXPORT_WAREHOUSE", str(tmp_path / "iceberg"))


@pytest.fixture
def loaded() -> dict[str, Any]:
    """State shared by the examples of one hypothesis test: the data is loaded once."""
    return {}


@pytest.fixture
async def dashboard_pipeline(migrated: Settings) -> AsyncIterator[Pipeline]:
    """Real pipeline data for two students, and a tracker that keeps exporting during the test."""
    settings = migrated
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    pseudonymizer = Pseudonymizer.from_settings(settings)
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
    backend = build_backend(tracker, pseudonymizer, tracer_provider=provider)
    await simulate_students(backend, [DASHBOARD_LEARNER, DASHBOARD_OTHER], sessions_per_student=3)
    tracker.achievement_unlocked(DASHBOARD_LEARNER, "first-steps")
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=30)
    yield settings, tracker, provider
    provider.shutdown()


@pytest.fixture
async def experiments_pipeline(migrated: Settings) -> AsyncIterator[Pipeline]:
    """One experiment with its per-variant sums written straight into the table (EXPERIMENT_ROWS)."""
    conn = await connect(migrated)
    try:
        body = definition(
            "coach-prompt", primary_metric="xp", guardrail_metrics=["completion_rate", "sessions"]
        )
        await store.create(conn, ExperimentDefinition.model_validate(body), "test")
        await conn.executemany(
            "INSERT INTO experiment_variant_sums (experiment_key, version, variant, metric, n, successes, "
            "sum, sum_squares) VALUES ('coach-prompt', 1, $1, $2, $3, $4, $5, $6)",
            EXPERIMENT_ROWS,
        )
    finally:
        await conn.close()
    provider = TracerProvider()
    yield migrated, StudyInTracker(tracer_provider=provider), provider
    provider.shutdown()


async def _serve(settings: Settings) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    for _ in range(200):
        if uv.started:
            break
        await asyncio.sleep(0.05)
    assert uv.started, "the query API did not start"
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)


# One server fixture per pipeline: the API starts after the pipeline's data is in place.
@pytest.fixture
async def dashboard_server(dashboard_pipeline: Pipeline) -> AsyncIterator[str]:
    async for base in _serve(dashboard_pipeline[0]):
        yield base


@pytest.fixture
async def experiments_server(experiments_pipeline: Pipeline) -> AsyncIterator[str]:
    async for base in _serve(experiments_pipeline[0]):
        yield base


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        try:
            instance = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as exc:  # a missing browser is a failure, never a skip
            pytest.fail(
                f"cannot start Chromium at {CHROMIUM}: {exc} (apt-get install chromium)", pytrace=False
            )
        yield instance
        await instance.close()
