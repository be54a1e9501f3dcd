"""Privacy canary: a distinctive user id and e-mail go through a full run and surface nowhere.

API requests through ``instrument_app`` (login with the e-mail, the id in paths, queries,
headers, an error whose message quotes both, app code setting identity attributes, also nested
in kvlists and arrays and as bytes, a declared event attribute sent as a kvlist, an
internationalized address, plain and percent-encoded), tracker calls (sessions, stateless
sessions, AI coach, lenient drops of bad values), the real ``RedisStreamSpanExporter``, the
aggregator into PostgreSQL. Then the raw id and e-mail must be absent from Redis, PostgreSQL
and every log line and console output of the run, while the pseudonym is present (the run did
reach the tables).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request, Response
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker, instrument_app
from tests.support import postgres_dump, redis_dump

RAW_ID = "canary-uid-9f8e7d6c5b4a"
EMAIL = "canary.9f8e7d@patients.example"
IDN_EMAIL = "kanarie.9f8e7d@bücher.example"
CANARIES = (RAW_ID, EMAIL, IDN_EMAIL, "canary.9f8e7d", "kanarie.9f8e7d", "9f8e7d6c5b4a")


def track_a_session(tracker: StudyInTracker, user: str) -> str:
    """Every tracker call of one study session (one with a rejected value), as the app makes them."""
    with tracker.session(user, material_id="cardio-101") as session:
        tracker.material_view(user, "cardio-101", "video")
        tracker.material_progress(user, "cardio-101", "video", 0.5)
        tracker.material_complete(user, "cardio-101", "video", score=0.9)
        tracker.xp_awarded(user, 20, "material_complete")
        tracker.material_view(user, EMAIL, "video")  # lenient: dropped, counted, logged w/o value
        interaction = tracker.ai_coach_interaction(
            user,
            latency_ms=900.0,
            tokens_in=50,
            tokens_out=200,
            model="gpt-4o-mini",
            topic_category="cardiology",
            session=session,
        )
    assert interaction is not None
    tracker.ai_coach_feedback(user, interaction.interaction_id, 5)
    tracker.achievement_unlocked(user, "first-session")
    tracker.streak_updated(user, 1)
    tracker.level_up(user, 2, 120)
    tracker.system_metric("profile.cache_hit_ratio", 0.5, user_id=user)
    ticket = tracker.begin_session(user)
    tracker.end_session(user, ticket.session_id, started_at=ticket.started_at - timedelta(minutes=3))
    return str(session.session_id)


def build_backend(tracker: StudyInTracker, provider: TracerProvider, pseudonymizer: Pseudonymizer) -> Any:
    app = FastAPI()
    tracer = provider.get_tracer("studyin.backend")

    @app.middleware("http")
    async def auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            request.state.user_id = header.removeprefix("Bearer ")
        return await call_next(request)

    @app.post("/auth/login")
    async def login(request: Request) -> dict[str, str]:
        body = await request.json()
        # sloppy app code: identity on the span, the e-mail in a span name and a log-ish attribute
        span = trace.get_current_span()
        span.set_attribute("user.email", body["email"])
        span.set_attribute("enduser.id", RAW_ID)
        with tracer.start_as_current_span(f"lookup {body['email']}") as lookup:
            lookup.set_attribute("note", f"found {body['email']}")
        return {"token": RAW_ID}

    @app.get("/users/{user_id}/profile")
    async def profile(user_id: str, request: Request) -> dict[str, str]:
        trace.get_current_span().set_attribute("user.id", user_id)
        return {"ok": "yes"}

    @app.post("/sessions")
    async def start(request: Request) -> dict[str, str]:
        return {"session_id": track_a_session(tracker, request.state.user_id)}

    @app.get("/materials/{material_id}")
    async def material(material_id: str) -> dict[str, str]:
        return {"id": material_id}

    @app.post("/notes")
    async def notes() -> dict[str, str]:
        # sloppy app code with structured values (the SDK keeps kvlists, arrays and bytes as set)
        span = trace.get_current_span()
        who = {"user.id": RAW_ID, "user.email": EMAIL, "aliases": [[IDN_EMAIL]], "raw": EMAIL.encode()}
        span.set_attribute("app.request", {"who": who, "cc": [[f"cc {IDN_EMAIL}"]]})
        span.add_event(  # a declared attribute sent as a kvlist, another as an array
            "studyin.material_view",
            {
                "studyin.material.id": {"user.id": RAW_ID, "email": IDN_EMAIL},
                "studyin.material.type": "video",
                "studyin.xp.reason": [IDN_EMAIL],
            },
        )
        return {"ok": "yes"}

    @app.get("/broken")
    async def broken(request: Request) -> None:
        try:  # app code whose own span records an exception (SDK: message + stack trace)
            with tracer.start_as_current_span("load-record"):
                raise KeyError(f"{request.state.user_id} / {EMAIL}")
        except KeyError:
            pass
        raise LookupError(f"no record for {request.state.user_id} <{EMAIL}>")

    return instrument_app(app, tracer_provider=provider, pseudonymizer=pseudonymizer)


async def test_canary_id_and_email_surface_nowhere(
    migrated: Settings, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = migrated
    caplog.set_level(logging.DEBUG)
    # The test client's own request log line (httpx, INFO) quotes URLs it was given; it is
    # not part of the system under test.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    provider = TracerProvider(resource=Resource.create({"service.name": "canary-backend"}))
    exporter = RedisStreamSpanExporter(settings)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer, lenient=True)
    backend = build_backend(tracker, provider, pseudonymizer)

    transport = httpx.ASGITransport(app=backend, raise_app_exceptions=False, client=("198.51.100.7", 4242))
    headers = {
        "user-agent": f"StudyIn/1.0 ({EMAIL})",
        "cookie": f"remember={EMAIL}",
        "x-forwarded-for": "198.51.100.7",
    }
    async with httpx.AsyncClient(transport=transport, base_url="http://backend", headers=headers) as client:
        login = await client.post("/auth/login", json={"email": EMAIL, "password": "hunter2"})
        assert login.status_code == 200
        auth = {"authorization": f"Bearer {login.json()['token']}"}
        assert (await client.get(f"/users/{RAW_ID}/profile?email={EMAIL}", headers=auth)).status_code == 200
        assert (await client.post("/sessions", headers=auth)).status_code == 200
        assert (await client.get(f"/materials/cardio-101?ref={EMAIL}", headers=auth)).status_code == 200
        assert (await client.post("/notes", headers=auth)).status_code == 200
        assert (await client.get(f"/materials/{quote(IDN_EMAIL)}", headers=auth)).status_code == 200
        assert (await client.get("/broken", headers=auth)).status_code == 500
        assert (await client.get(f"/nowhere/{RAW_ID}", headers=auth)).status_code == 404
    provider.shutdown()
    assert exporter.spans_dropped == 0 and exporter.spans_exported > 0
    assert tracker.dropped_events == 1

    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=30)
    assert totals.events_inserted > 10

    bus = redis_dump(settings.redis_url or "", settings.stream_prefix)
    tables = await postgres_dump(settings)
    captured = capfd.readouterr()
    outputs = {
        "redis": bus.decode("utf-8", "replace"),
        "postgres": tables,
        "logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
    }
    for where, text in outputs.items():
        for canary in CANARIES:
            assert canary not in text, f"{canary!r} found in {where}"
    # and the run did reach the tables, attributed to the pseudonym
    pseudonym = pseudonymizer.pseudonymize(RAW_ID)
    assert pseudonym in tables
    assert "/users/{user_id}/profile" in tables and "LookupError" in tables
    # the event with a kvlist and an array under declared string keys arrived without them
    conn = await asyncpg.connect(settings.postgres_url)
    try:
        views = await conn.fetch(
            f'SELECT properties FROM "{settings.postgres_schema}".analytics_events '
            "WHERE event_type = 'material_view'"
        )
    finally:
        await conn.close()
    assert {"material_type": "video"} in [json.loads(row["properties"]) for row in views]
    assert (
        "dropped invalid material_view event: material_id" in caplog.text
    )  # the lenient drop was logged, without its value
