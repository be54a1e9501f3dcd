"""Fixtures of the query API tests (their builders: tests/support/api.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider

from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.aggregator.devtools.embedded import free_port
from studyin_analytics.instrumentation import StudyInTracker
from studyin_analytics.instrumentation.settings import Settings
from tests.support.api import Api, open_api


@pytest.fixture
async def api(migrated: Settings) -> AsyncIterator[Api]:
    async for value in open_api(migrated):
        yield value


@pytest.fixture
async def server(pipeline: tuple[Settings, StudyInTracker, TracerProvider]) -> AsyncIterator[str]:
    settings = pipeline[0]
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
