"""The foundation slice: one learning session from the tracker to the overview endpoint."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import jwt
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from studyin_analytics.instrumentation.settings import Settings
from tests.support import TEST_JWT_SECRET, postgres_dump, redis_dump

RAW_USER_ID = "canary-user-4815162342"


def token_for(settings: Settings, sub: str) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": sub,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "exp": now + timedelta(minutes=5),
    }
    return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")


async def test_learning_session_reaches_the_overview(migrated: Settings) -> None:
    settings = migrated
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    pseudonymizer = Pseudonymizer.from_settings(settings)
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)

    with tracker.session(RAW_USER_ID) as session:
        tracker.material_view(RAW_USER_ID, "cardio-101", "video", session=session)
        tracker.material_complete(RAW_USER_ID, "cardio-101", "video", session=session)
        tracker.xp_awarded(RAW_USER_ID, 25, "material_complete", session=session)
        await asyncio.sleep(0.05)
    provider.shutdown()

    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=20)
    assert totals.events_inserted == 5  # start, view, complete, xp, end

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.get(
                "/api/analytics/learning/overview",
                params={"days": 7},
                headers={"authorization": f"Bearer {token_for(settings, RAW_USER_ID)}"},
            )
    assert response.status_code == 200, response.text
    overview = response.json()
    assert overview["sessions"] == 1
    assert overview["materials_viewed"] == 1
    assert overview["materials_completed"] == 1
    assert overview["xp"] == 25
    assert overview["study_minutes"] > 0
    assert len(overview["daily"]) == 1

    # The raw id reached neither Redis nor PostgreSQL; its pseudonym did.
    pseudonym = pseudonymizer.pseudonymize(RAW_USER_ID)
    bus = redis_dump(settings.redis_url or "", settings.stream_prefix)
    tables = await postgres_dump(settings)
    assert RAW_USER_ID.encode() not in bus
    assert RAW_USER_ID not in tables
    assert pseudonym in tables


async def test_redelivered_batch_changes_nothing(migrated: Settings) -> None:
    """The same stream entry added twice (a retried export) is counted once."""
    settings = migrated
    provider = TracerProvider()
    exporter = RedisStreamSpanExporter(settings)
    captured = []

    class Twice(SimpleSpanProcessor):
        def on_end(self, span):  # type: ignore[no-untyped-def]
            captured.append(span)
            super().on_end(span)
            super().on_end(span)

    provider.add_span_processor(Twice(exporter))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    with tracker.session("user-2"):
        pass
    provider.shutdown()
    assert exporter.batches_exported == 2

    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=20)
    assert totals.events_seen == 4
    assert totals.events_inserted == 2
