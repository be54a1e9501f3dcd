"""Builders of the query API tests: tokens, a running app, and data from the real pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.aggregator.devtools.embedded import free_port
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.runtime.httpserver import server_config
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from studyin_analytics.instrumentation.settings import Settings
from tests.support import TEST_JWT_SECRET

LEARNER_A = "learner-a-0001"
LEARNER_B = "learner-b-0002"
STAFF = "staff-0003"


def token(
    settings: Settings,
    sub: Any,
    *,
    roles: Iterable[str] | str = (),
    key: Any = TEST_JWT_SECRET,
    algorithm: str = "HS256",
    expires_in: timedelta = timedelta(minutes=5),
    **overrides: Any,
) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": sub,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + expires_in,
        "roles": roles if isinstance(roles, str) else list(roles),
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


class Api:
    """A running query API (lifespan entered) and an httpx client on it."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, settings: Settings) -> None:
        self.app = app
        self.client = client
        self.settings = settings

    def auth(self, sub: Any, **kwargs: Any) -> dict[str, str]:
        return bearer(token(self.settings, sub, **kwargs))

    async def flush_tracked(self) -> None:
        """Push events posted to /events/track from the batch processor to the bus."""
        provider: TracerProvider = self.app.state.tracer_provider
        assert await asyncio.to_thread(provider.force_flush, 10_000)


async def open_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(app, client, settings)


async def run_pipeline(settings: Settings, produce: Callable[[StudyInTracker, TracerProvider], None]) -> int:
    """Let ``produce`` report events through the tracker, export them to the bus, aggregate.

    Returns the number of events the aggregator inserted.
    """
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    produce(tracker, provider)
    provider.shutdown()
    return await aggregate(settings)


async def aggregate(settings: Settings) -> int:
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=30)
    return totals.events_inserted


@asynccontextmanager
async def served(settings: Settings, **config: Any) -> AsyncIterator[tuple[str, FastAPI]]:
    """The query API on a real uvicorn server on a free port, configured as ``studyin-analytics
    api`` configures it (read deadlines included): its base URL and the app."""
    app = create_app(settings)
    server = uvicorn.Server(
        server_config(app, settings, "127.0.0.1", free_port(), log_level="warning", **config)
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    assert server.started, "the query API did not start"
    try:
        yield f"http://127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)
