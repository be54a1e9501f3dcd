"""The staff endpoints of access export and erasure: the same semantics as ``learner export|erase``,
staff only, audited, the raw id in the body only."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api.learners import ERASE_PATH, EXPORT_PATH
from studyin_analytics.aggregator.learners.identity import learner_of
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.api import STAFF, Api
from tests.support.workload import build, push

SEED = 11
VICTIM = f"wl-user-{SEED}-2"

pytestmark = pytest.mark.usefixtures("export_paths")  # conftest: exports into the test's tmp_path


async def test_a_learner_is_refused_and_the_attempt_audited(api: Api) -> None:
    for path in (EXPORT_PATH, ERASE_PATH):
        response = await api.client.post(path, json={"user_id": VICTIM}, headers=api.auth("learner-x"))
        assert response.status_code == 403
        assert response.headers["content-type"].startswith("application/problem+json")
    async with api.app.state.pool.acquire() as conn:
        rows = await conn.fetch("SELECT endpoint, outcome FROM access_audit_log ORDER BY id")
    assert [tuple(r) for r in rows] == [(EXPORT_PATH, "denied"), (ERASE_PATH, "denied")]


async def test_a_missing_user_id_is_a_problem_naming_the_field(api: Api) -> None:
    response = await api.client.post(EXPORT_PATH, json={}, headers=api.auth(STAFF, roles=["staff"]))
    assert response.status_code == 422
    assert "user_id" in response.text


async def test_staff_export_then_erase_then_nothing_is_left(api: Api) -> None:
    settings = api.settings
    wl = build(Pseudonymizer.from_settings(settings), users=5, seed=SEED, spans_per_entry=5)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    staff = api.auth(STAFF, roles=["staff"])
    learner = learner_of(VICTIM, settings)

    response = await api.client.post(EXPORT_PATH, json={"user_id": VICTIM}, headers=staff)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    tables = {r["place"] for r in lines if r["sink"] == "postgresql"}
    assert {"analytics_events", "gamification_stats", "learning_sessions"} <= tables
    assert {r["sink"] for r in lines} == {"postgresql", "redis"}  # the bus keeps entries until retention
    assert VICTIM not in response.text

    response = await api.client.post(ERASE_PATH, json={"user_id": VICTIM}, headers=staff)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["clean"] and report["erased"]["postgresql"]["analytics_events"] > 0
    again = await api.client.post(EXPORT_PATH, json={"user_id": VICTIM}, headers=staff)
    assert again.text == ""
    async with api.app.state.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT endpoint, subject_hash, detail::text FROM access_audit_log ORDER BY id"
        )
    assert [r["endpoint"] for r in rows] == [EXPORT_PATH, "learner erase", EXPORT_PATH]
    assert {r["subject_hash"] for r in rows} == {learner.reference}
    assert all(p not in str([tuple(r) for r in rows]) for p in learner.pseudonyms)
    assert VICTIM not in str([tuple(r) for r in rows])


async def test_the_funnels_store_forgets_an_erased_learner_without_a_restart(api: Api) -> None:
    """The API's in-memory event store (funnels, retention) reads the view afresh after an erasure."""
    settings = api.settings
    wl = build(Pseudonymizer.from_settings(settings), users=5, seed=SEED, spans_per_entry=5)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    store = api.app.state.analysis
    victim = learner_of(VICTIM, settings)

    def held() -> int:
        """The victim's rows in the store."""
        codes = [store.store.learners.codes.get(p) for p in victim.pseudonyms]
        rows = store.store.columns["learner"]
        return sum(int((rows == code).sum()) for code in codes if code is not None)

    deadline = time.monotonic() + 60
    while not held():  # the background task loads the store; the horizon may lag other transactions
        assert time.monotonic() < deadline, "the store never loaded the learner's events"
        async with api.app.state.pool.acquire() as conn:
            await store.refresh(conn, force=True)
        await asyncio.sleep(0.2)
    response = await api.client.post(
        ERASE_PATH, json={"user_id": VICTIM}, headers=api.auth(STAFF, roles=["staff"])
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30
    while held():
        assert time.monotonic() < deadline, "the erased learner's events stayed in the API's store"
        await asyncio.sleep(0.2)
    assert len(store.store) > 0  # the others are still there


async def test_the_endpoints_erase_with_the_apis_own_login_and_no_owner_url(api: Api, test_id: str) -> None:
    """The API process of the deployment examples: only API_POSTGRES_URL, a login in studyin_api and the
    erasure role; no POSTGRES_URL (the owner's) at all."""
    from urllib.parse import urlsplit, urlunsplit

    from studyin_analytics.aggregator.storage.db import connect
    from tests.support.api import open_api

    owner = api.settings
    login = f"t_{test_id}_api"
    wl = build(Pseudonymizer.from_settings(owner), users=4, seed=SEED, spans_per_entry=5)
    push(owner.redis_url or "", stream_keys(owner)[0], wl.entries)
    async with Aggregator(owner) as aggregator:
        await aggregator.drain(timeout_s=60)
    admin = await connect(owner)
    roles = f"{owner.postgres_api_role}, {owner.postgres_erasure_role}"
    await admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'pw-{login}' IN ROLE {roles}")
    try:
        parts = urlsplit(owner.postgres_url or "")
        netloc = f"{login}:pw-{login}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        settings = owner.with_overrides(postgres_url=None, api_postgres_url=url)
        assert settings.postgres_url is None
        async for own in open_api(settings):
            staff = own.auth(STAFF, roles=["staff"])
            response = await own.client.post(ERASE_PATH, json={"user_id": VICTIM}, headers=staff)
            assert response.status_code == 200, response.text
            assert (
                response.json()["clean"] and response.json()["erased"]["postgresql"]["analytics_events"] > 0
            )
            exported = await own.client.post(EXPORT_PATH, json={"user_id": VICTIM}, headers=staff)
            assert exported.status_code == 200 and exported.text == ""
    finally:
        await admin.execute(f"DROP OWNED BY {login}")
        await admin.execute(f"DROP ROLE {login}")
        await admin.close()
