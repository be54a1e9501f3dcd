"""Staff custom-event routes: register (refusals as 422 problems naming each pointer), list, daily counts;
learners are refused (403); a registration reaches applications through the snapshot at once."""

from __future__ import annotations

import copy

import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.custom_registry import SNAPSHOT_KIND
from studyin_analytics.instrumentation.custom_schemas import decode_snapshot
from tests.support.api import LEARNER_A, STAFF, open_api
from tests.support.custom_events import CASE, case_schema

PATH = "/api/analytics/custom-events/schemas"


async def test_staff_register_list_and_read_daily_counts(migrated: Settings) -> None:
    async for api in open_api(migrated):
        staff = api.auth(STAFF, roles=["staff"])
        learner = api.auth(LEARNER_A)
        body = {"name": CASE, "version": "1-0-0", "schema": case_schema()}
        assert (await api.client.post(PATH, json=body, headers=learner)).status_code == 403
        created = await api.client.post(PATH, json=body, headers=staff)
        assert created.status_code == 201, created.text
        assert created.json()["level"] == "MODEL"

        again = await api.client.post(PATH, json=body, headers=staff)
        assert again.status_code == 422 and again.headers["content-type"].startswith(
            "application/problem+json"
        )
        assert again.json()["code"] == "schema_refused"

        narrowed = copy.deepcopy(case_schema())
        narrowed["properties"]["case_id"]["maxLength"] = 8
        narrowed["properties"]["email"] = {"type": "string", "maxLength": 9}
        refused = await api.client.post(
            PATH, json={"name": CASE, "version": "1-0-1", "schema": narrowed}, headers=staff
        )
        assert refused.status_code == 422
        locs = {tuple(e["loc"]) for e in refused.json()["errors"]}
        assert ("body", "schema", "properties", "email") in locs
        for field, body in (  # the registration's own fields are named, not the schema
            ("version", {"name": CASE, "version": "1.0.1", "schema": case_schema()}),
            ("version", {"name": CASE, "version": "1-0-0", "schema": case_schema()}),
            ("name", {"name": "case_completed", "version": "1-0-0", "schema": case_schema()}),
        ):
            wrong = await api.client.post(PATH, json=body, headers=staff)
            assert wrong.status_code == 422
            assert [tuple(e["loc"]) for e in wrong.json()["errors"]] == [("body", field)], wrong.text

        listed = await api.client.get(PATH, params={"name": CASE}, headers=staff)
        assert [v["version"] for v in listed.json()] == ["1-0-0"] and listed.json()[0][
            "schema"
        ] == case_schema()
        assert (await api.client.get(PATH, headers=learner)).status_code == 403
        daily = await api.client.get("/api/analytics/custom-events/daily", headers=staff)
        assert daily.status_code == 200 and daily.json() == []
        bad = await api.client.get("/api/analytics/custom-events/daily", params={"days": 0}, headers=staff)
        assert bad.status_code == 422

    client = redis.Redis.from_url(migrated.redis_url or "")
    try:
        payload = client.hget(f"{migrated.stream_prefix}:snapshot:{SNAPSHOT_KIND}", "payload")
    finally:
        client.close()
    assert isinstance(payload, bytes) and decode_snapshot(payload).get(CASE, "1-0-0") is not None
