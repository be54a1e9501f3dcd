"""Every read endpoint against rollups produced by the real pipeline.

tracker / instrumented backend -> RedisStreamSpanExporter -> bus -> Aggregator -> PostgreSQL ->
query API; plus the access audit log those reads leave behind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from studyin_analytics.aggregator.api import audit
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker, instrument_app
from tests.support import postgres_dump
from tests.support.api import LEARNER_A, LEARNER_B, STAFF, aggregate, open_api

PREFIX = "/api/analytics"


def _backend(tracker: StudyInTracker, provider: TracerProvider, settings: Settings) -> FastAPI:
    """A tiny StudyIn-like backend, auto-instrumented: its requests become system metrics."""
    app = FastAPI()

    @app.get("/materials/{material_id}")
    async def material(material_id: str) -> dict[str, str]:
        return {"id": material_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("backend failure")

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404)

    return instrument_app(  # type: ignore[no-any-return]
        app,
        tracer_provider=provider,
        pseudonymizer=Pseudonymizer.from_settings(settings),
        settings=settings,
    )


async def _produce(settings: Settings) -> dict[str, Any]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))

    with tracker.session(LEARNER_A) as session:
        tracker.material_view(LEARNER_A, "cardio-101", "video", session=session)
        tracker.material_complete(LEARNER_A, "cardio-101", "video", session=session)
        tracker.xp_awarded(LEARNER_A, 30, "material_complete", session=session)
        await asyncio.sleep(0.05)
    tracker.level_up(LEARNER_A, 2, 130)
    tracker.achievement_unlocked(LEARNER_A, "first-steps")
    tracker.achievement_unlocked(LEARNER_A, "cardio-fan")
    tracker.streak_updated(LEARNER_A, 4)
    # Stateless session that began 90 minutes ago: a big block of study time.
    started = datetime.now(UTC) - timedelta(minutes=90)
    sid = uuid.uuid4()
    tracker.end_session(LEARNER_A, sid, started_at=started, xp_earned=0)

    with tracker.session(LEARNER_B) as session:
        tracker.xp_awarded(LEARNER_B, 40, "quiz", session=session)

    backend = _backend(tracker, provider, settings)
    transport = httpx.ASGITransport(app=backend, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
        for i in range(6):
            assert (await client.get(f"/materials/m-{i}")).status_code == 200
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/missing")).status_code == 404
    provider.shutdown()
    inserted = await aggregate(settings)
    return {"inserted": inserted}


Get = Callable[..., Awaitable[httpx.Response]]


async def _check_overview(get: Get, as_a: dict[str, str], a_hash: str) -> dict[str, Any]:
    # --- overview ----------------------------------------------------------------
    response = await get(f"{PREFIX}/learning/overview", params={"days": 30}, headers=as_a)
    assert response.status_code == 200, response.text
    overview = response.json()
    assert overview["subject"] == a_hash
    assert overview["sessions"] >= 1  # the stateless session has no session_start
    assert overview["materials_viewed"] == 1
    assert overview["materials_completed"] == 1
    assert overview["xp"] == 30  # B's XP is not A's
    assert overview["study_minutes"] >= 89  # the 90-minute stateless session
    assert overview["current_streak"] == 4
    assert sum(d["xp"] for d in overview["daily"]) == 30
    assert response.headers["cache-control"].startswith("private")
    etag = response.headers["etag"]
    again = await get(
        f"{PREFIX}/learning/overview", params={"days": 30}, headers={**as_a, "if-none-match": etag}
    )
    assert again.status_code == 304
    assert again.content == b""
    return overview


async def _check_heatmap_and_gamification(get: Get, as_a: dict[str, str], overview: dict[str, Any]) -> None:
    # --- heatmap in two time zones ------------------------------------------------
    today = datetime.now(UTC).date()
    params = {"tz": "UTC", "start": str(today - timedelta(days=6)), "end": str(today + timedelta(days=1))}
    response = await get(f"{PREFIX}/learning/heatmap", params=params, headers=as_a)
    assert response.status_code == 200, response.text
    heatmap = response.json()
    assert len(heatmap["days"]) == 8
    assert heatmap["days"][0]["day"] == params["start"]
    assert heatmap["total_minutes"] >= 89
    assert 1 <= heatmap["active_days"] <= 2
    assert max(d["level"] for d in heatmap["days"]) == 4  # an hour or more on one day
    assert (
        heatmap["total_minutes"] == overview["study_minutes"]
        or abs(heatmap["total_minutes"] - overview["study_minutes"]) < 0.01
    )
    kiritimati = await get(
        f"{PREFIX}/learning/heatmap", params={**params, "tz": "Pacific/Kiritimati"}, headers=as_a
    )
    assert kiritimati.status_code == 200
    assert abs(kiritimati.json()["total_minutes"] - heatmap["total_minutes"]) < 0.01

    # --- gamification ---------------------------------------------------------------
    response = await get(f"{PREFIX}/gamification/progress", params={"days": 7}, headers=as_a)
    assert response.status_code == 200, response.text
    progress = response.json()
    assert progress["level"] == 2
    assert progress["achievements"] == ["cardio-fan", "first-steps"]
    assert progress["streaks"]["current"] == 4
    assert progress["xp_in_window"] == 30
    assert progress["xp_trend"][-1]["cumulative_xp"] == 30
    assert progress["xp_total"] >= 30


async def _check_staff_views(get: Get, as_staff: dict[str, str]) -> None:
    # --- system metrics (staff) -----------------------------------------------------------
    response = await get(f"{PREFIX}/system/metrics", params={"window": "1h"}, headers=as_staff)
    assert response.status_code == 200, response.text
    metrics = response.json()
    routes = {(r["route"], r["method"]): r for r in metrics["routes"]}
    material = routes[("/materials/{material_id}", "GET")]
    assert material["requests"] == 6
    assert material["errors"] == 0
    assert 0 < material["p50_ms"] <= material["p95_ms"] <= material["p99_ms"]
    boom = routes[("/boom", "GET")]
    assert boom["requests"] == 1 and boom["errors"] == 1 and boom["error_rate"] == 1.0
    assert sum(boom["errors_by_type"].values()) == 1
    assert routes[("/missing", "GET")]["client_errors"] == 1
    assert metrics["active_users"] >= 2
    assert metrics["pipeline"]["entries_behind"] == 0  # everything was aggregated

    # --- cohort (staff) ---------------------------------------------------------------
    response = await get(f"{PREFIX}/cohort/overview", params={"days": 7}, headers=as_staff)
    assert response.status_code == 200, response.text
    cohort = response.json()
    assert cohort["xp"] == 70  # A's 30 and B's 40
    assert cohort["materials_viewed"] == 1


async def _check_audit_log(
    settings: Settings, pseudonymizer: Pseudonymizer, a_hash: str, b_hash: str
) -> None:
    # --- the audit log: every read above, pseudonyms only -----------------------------------
    conn = await connect(settings)
    try:
        rows = await audit.entries(conn)
    finally:
        await conn.close()
    staff_hash = pseudonymizer.pseudonymize(STAFF)
    by_endpoint = {(r.endpoint, r.actor_hash, r.subject_hash, r.scope, r.outcome) for r in rows}
    assert (f"{PREFIX}/learning/overview", a_hash, a_hash, "user", "allowed") in by_endpoint
    assert (f"{PREFIX}/learning/heatmap", a_hash, a_hash, "user", "allowed") in by_endpoint
    assert (f"{PREFIX}/gamification/progress", a_hash, a_hash, "user", "allowed") in by_endpoint
    assert (f"{PREFIX}/system/metrics", staff_hash, None, "system", "allowed") in by_endpoint
    assert (f"{PREFIX}/cohort/overview", staff_hash, None, "cohort", "allowed") in by_endpoint
    assert (f"{PREFIX}/learning/overview", b_hash, b_hash, "user", "allowed") in by_endpoint
    assert len([r for r in rows if r.endpoint.endswith("/overview") and r.actor_hash == a_hash]) == 2
    assert all(r.actor_role == ("staff" if r.actor_hash == staff_hash else "learner") for r in rows)

    # Append-only, and no raw id anywhere in the database.
    conn = await connect(settings)
    try:
        failed = False
        try:
            await conn.execute("DELETE FROM access_audit_log")
        except Exception as exc:  # the trigger refuses
            failed = "append-only" in str(exc)
        assert failed
    finally:
        await conn.close()
    tables = await postgres_dump(settings)
    for raw in (LEARNER_A, LEARNER_B, STAFF):
        assert raw not in tables


async def test_read_endpoints_serve_pipeline_rollups_and_audit_each_read(migrated: Settings) -> None:
    settings = migrated
    produced = await _produce(settings)
    assert produced["inserted"] > 10
    pseudonymizer = Pseudonymizer.from_settings(settings)
    a_hash = pseudonymizer.pseudonymize(LEARNER_A)
    b_hash = pseudonymizer.pseudonymize(LEARNER_B)

    async for api in open_api(settings.with_overrides(min_cohort_size=2)):  # A and B: a day of 2
        as_a = api.auth(LEARNER_A)
        get = api.client.get
        overview = await _check_overview(get, as_a, a_hash)
        await _check_heatmap_and_gamification(get, as_a, overview)
        await _check_staff_views(get, api.auth(STAFF, roles=["staff"]))
        # --- learner B sees only B ------------------------------------------------------
        response = await get(f"{PREFIX}/learning/overview", headers=api.auth(LEARNER_B))
        assert response.json()["xp"] == 40 and response.json()["subject"] == b_hash

    await _check_audit_log(settings, pseudonymizer, a_hash, b_hash)


def test_a_streak_not_extended_since_before_yesterday_is_over() -> None:
    from datetime import date

    from studyin_analytics.aggregator.api.days import current_streak

    today = date(2026, 11, 25)
    at = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
    assert current_streak(5, at, today) == 5
    assert current_streak(5, at - timedelta(days=1), today) == 0
    assert current_streak(None, at, today) == 0
    assert current_streak(3, None, today) == 0
