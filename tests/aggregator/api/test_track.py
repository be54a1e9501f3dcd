"""POST /api/analytics/events/track: per-item results, attribution, the same exporter path."""

from __future__ import annotations

import asyncio
import time
import uuid

from studyin_analytics.instrumentation import Pseudonymizer
from tests.support import postgres_dump, redis_dump
from tests.support.api import LEARNER_A, Api, aggregate

TRACK = "/api/analytics/events/track"
CANARY = "canary-frontend-user-31337"


async def test_batch_gets_per_item_results_and_reaches_the_rollups(api: Api) -> None:
    session_id = str(uuid.uuid4())
    batch = {
        "events": [
            {"type": "session_start", "data": {"session_id": session_id}},
            {"type": "material_view", "data": {"material_id": "neuro-7", "material_type": "pdf"}},
            {"type": "material_view", "data": {"material_id": "Not A Slug!", "material_type": "pdf"}},
            {"type": "material_complete", "data": {"material_id": "neuro-7", "material_type": "pdf", "x": 1}},
            {"type": "xp_awarded", "data": {"xp_amount": 1000, "xp_reason": "cheat"}},
            {"type": "no_such_event", "data": {}},
            {"type": "session_end", "data": {"session_id": session_id, "duration_s": 600}},
        ]
    }
    started = time.monotonic()
    response = await api.client.post(TRACK, json=batch, headers=api.auth(CANARY))
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 4)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "accepted", "rejected", "rejected", "rejected", "rejected", "accepted"]
    assert body["results"][2]["errors"][0]["loc"] == ["body", "events", 2, "data", "material_id"]
    assert body["results"][3]["errors"][0]["loc"] == ["body", "events", 3, "data", "x"]
    assert body["results"][4]["errors"][0]["msg"] == "clients may not report this event type"
    assert body["results"][5]["errors"][0]["msg"] == "unknown event type"

    await api.flush_tracked()
    await aggregate(api.settings)

    overview = (await api.client.get("/api/analytics/learning/overview", headers=api.auth(CANARY))).json()
    assert overview["sessions"] == 1
    assert overview["materials_viewed"] == 1
    assert overview["materials_completed"] == 0
    assert overview["xp"] == 0  # a client cannot mint XP
    # Reported 600 s, but started and ended in one request: the recorded span is what counts.
    assert 0 <= overview["study_minutes"] <= (time.monotonic() - started) / 60
    assert overview["subject"] == Pseudonymizer.from_settings(api.settings).pseudonymize(CANARY)

    # The caller's raw id went nowhere: the privacy guard and pseudonymizer sat on the path.
    assert CANARY.encode() not in redis_dump(api.settings.redis_url or "", api.settings.stream_prefix)
    assert CANARY not in await postgres_dump(api.settings)


async def test_envelope_errors_and_limits(api: Api) -> None:
    headers = api.auth(LEARNER_A)
    post = api.client.post

    response = await post(TRACK, json={"events": [], "extra": 1}, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    locs = [e["loc"] for e in response.json()["errors"]]
    assert ["body", "events"] in locs and ["body", "extra"] in locs

    response = await post(
        TRACK, json={"events": [{"type": "material_view", "data": {}, "user": "x"}]}, headers=headers
    )
    assert response.status_code == 422
    assert ["body", "events", 0, "user"] in [e["loc"] for e in response.json()["errors"]]

    response = await post(
        TRACK, content=b"{not json", headers={**headers, "content-type": "application/json"}
    )
    assert response.status_code == 422

    too_many = {"events": [{"type": "material_view", "data": {}}] * 501}
    response = await post(TRACK, json=too_many, headers=headers)
    assert response.status_code == 422

    huge = b'{"events": [' + b" " * (api.settings.api_max_body_bytes + 10) + b"]}"
    response = await post(TRACK, content=huge, headers={**headers, "content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b" " * (api.settings.api_max_body_bytes // 10)

    response = await post(TRACK, content=chunks(), headers={**headers, "content-type": "application/json"})
    assert response.status_code == 413  # no Content-Length: counted while reading

    response = await post(TRACK, json={"events": [{"type": "material_view", "data": {}}]})
    assert response.status_code == 401


async def test_a_learner_cannot_forge_study_time(api: Api) -> None:
    """Repeated ends of one session, ends without a start, week-long durations: the overview shows
    the one session, its study time at most the span the server recorded (the cohort hides the day:
    one learner is under k)."""
    forger, staff = "forger-0001", api.auth("staff-forger-0002", roles=["staff"])
    headers = api.auth(forger)
    session_id = str(uuid.uuid4())
    started = time.monotonic()
    response = await api.client.post(
        TRACK,
        json={"events": [{"type": "session_start", "data": {"session_id": session_id}}]},
        headers=headers,
    )
    assert response.json()["accepted"] == 1
    await asyncio.sleep(1.5)
    limit = api.settings.client_session_max_s
    repeated = [{"type": "session_end", "data": {"session_id": session_id, "duration_s": limit}}] * 250
    unstarted = [
        {"type": "session_end", "data": {"session_id": str(uuid.uuid4()), "duration_s": limit}}
        for _ in range(250)
    ]
    for batch in (repeated, unstarted, repeated):
        response = await api.client.post(TRACK, json={"events": batch}, headers=headers)
        assert response.json()["accepted"] == len(batch)
    elapsed = time.monotonic() - started
    too_long = {"type": "session_end", "data": {"session_id": session_id, "duration_s": limit + 1}}
    body = (await api.client.post(TRACK, json={"events": [too_long]}, headers=headers)).json()
    assert body["rejected"] == 1
    (error,) = body["results"][0]["errors"]
    assert (
        error["loc"] == ["body", "events", 0, "data", "duration_s"] and "client_session_max_s" in error["msg"]
    )

    await api.flush_tracked()
    await aggregate(api.settings)
    overview = (await api.client.get("/api/analytics/learning/overview", headers=headers)).json()
    assert overview["sessions"] == 1
    assert 1.4 / 60 <= overview["study_minutes"] <= elapsed / 60, overview
    cohort = (await api.client.get("/api/analytics/cohort/overview", headers=staff)).json()
    assert cohort["suppressed_days"] == 1 and cohort["daily"][0]["sessions"] is None
    assert cohort["sessions"] == 0 and cohort["study_minutes"] == 0
