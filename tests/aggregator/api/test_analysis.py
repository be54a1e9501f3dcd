"""Ad hoc funnels and retention through the query API: exact, staff only, audited, bad input refused.

Events are stored as the aggregator stores them (tests/support/analysis/loading.py); the API's
own store loads them from PostgreSQL as the API role. Answers are compared with the brute-force
reference computed from the generated events (tests/support/analysis/reference.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.analysis.definitions import (
    FunnelDefinition,
    FunnelStep,
    RetentionDefinition,
)
from studyin_analytics.aggregator.analysis.loader import AnalysisStore
from studyin_analytics.aggregator.analysis.reports import funnel_report, retention_report
from studyin_analytics.aggregator.api import audit
from studyin_analytics.aggregator.api.analysis import FUNNEL_PATH, RETENTION_PATH
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.instrumentation import Pseudonymizer
from tests.aggregator.analysis.test_engine import build_store
from tests.support.analysis.loading import opened_api, store_events, until_loaded
from tests.support.analysis.reference import EPOCH, Event, funnel_truth, learner_paths, retention_truth
from tests.support.api import LEARNER_A, STAFF

PATHWAY = ("session_start", "material_view", "material_progress", "material_complete", "xp_awarded")
FUNNEL: dict[str, Any] = {
    "steps": [{"event": e} for e in PATHWAY],
    "start": EPOCH.isoformat(),
    "end": "2026-12-01T00:00:00Z",
    "window_s": 30 * 86_400,
}
RETENTION: dict[str, Any] = {"start": EPOCH.date().isoformat(), "cohorts": 6, "periods": 5, "period": "week"}


def _settings(settings: Settings) -> Settings:
    return settings.with_overrides(min_cohort_size=2, analysis_refresh_s=0)


async def test_ad_hoc_funnel_and_retention_equal_the_brute_force(migrated: Settings) -> None:
    events = await store_events(migrated, learner_paths(7, learners=80))
    async with opened_api(_settings(migrated)) as api:
        await until_loaded(api.app.state.analysis, len(events))
        staff = api.auth(STAFF, roles=["staff"])
        response = await api.client.post(FUNNEL_PATH, json=FUNNEL, headers=staff)
        assert response.status_code == 200, response.text
        body = response.json()
        truth = funnel_truth(FunnelDefinition.model_validate(FUNNEL), events)
        expected = [sum(t.reached[s] for t in truth.values()) for s in range(len(PATHWAY))]
        shown = [s["learners"] for s in body["groups"][0]["steps"]]
        assert all(got in (None, want) for got, want in zip(shown, expected, strict=True))
        assert shown[0] == expected[0] > expected[-1] > 0 and shown[-1] is not None  # most drop out
        response = await api.client.post(RETENTION_PATH, json=RETENTION, headers=staff)
        assert response.status_code == 200, response.text
        sizes, retained, _ = retention_truth(RetentionDefinition.model_validate(RETENTION), events)
        cohorts = response.json()["cohorts"]
        assert all(c["size"] in (None, size) for c, size in zip(cohorts, sizes, strict=True))
        cells = [
            (cell["learners"], want)
            for c, row in zip(cohorts, retained, strict=True)
            for cell, want in zip(c["cells"], row, strict=True)
        ]
        assert all(got in (None, want) for got, want in cells)
        assert sum(got is not None and got > 0 for got, _ in cells) >= 5
        # The same answers as the engine over a store built independently, breakdown and all.
        store = build_store(events)
        definition = FunnelDefinition.model_validate({**FUNNEL, "breakdown": "material_type"})
        response = await api.client.post(FUNNEL_PATH, json=definition.model_dump(mode="json"), headers=staff)
        assert response.json() == funnel_report(store, definition, 2, 20).model_dump(mode="json")
        retention = RetentionDefinition.model_validate(
            {**RETENTION, "metric": "xp", "timezone": "Europe/Berlin"}
        )
        response = await api.client.post(
            RETENTION_PATH, json=retention.model_dump(mode="json"), headers=staff
        )
        assert response.json() == retention_report(store, retention, 2).model_dump(mode="json")


async def test_staff_only_and_every_read_audited_with_cohort_scope(migrated: Settings) -> None:
    await store_events(migrated, learner_paths(3, learners=10))
    pseudonymizer = Pseudonymizer.from_settings(migrated)
    async with opened_api(_settings(migrated)) as api:
        learner = api.auth(LEARNER_A)
        for path, body in ((FUNNEL_PATH, FUNNEL), (RETENTION_PATH, RETENTION)):
            response = await api.client.post(path, json=body, headers=learner)
            assert response.status_code == 403 and response.json()["code"] == "staff_role_required"
            response = await api.client.post(path, json=body)
            assert response.status_code == 401
            response = await api.client.post(path, json=body, headers=api.auth(STAFF, roles=["staff"]))
            assert response.status_code == 200
    conn = await connect(migrated)
    try:
        rows = await audit.entries(conn)
    finally:
        await conn.close()
    seen = {(r.endpoint, r.actor_hash, r.scope, r.outcome) for r in rows}
    staff, a = pseudonymizer.pseudonymize(STAFF), pseudonymizer.pseudonymize(LEARNER_A)
    for path in (FUNNEL_PATH, RETENTION_PATH):
        assert (path, staff, "cohort", "allowed") in seen
        assert (path, a, "cohort", "denied") in seen


INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({**FUNNEL, "steps": [{"event": "material_view"}]}, "steps", "at least 2"),
    ({**FUNNEL, "steps": [{"event": "material_view"}] * 21}, "steps", "at most 20"),
    (
        {**FUNNEL, "steps": [{"event": "api_request"}, {"event": "material_view"}]},
        "event",
        "unknown learning",
    ),
    ({**FUNNEL, "end": FUNNEL["start"]}, "body", "end: must be after start"),
    ({**FUNNEL, "end": "2028-01-01T00:00:00Z"}, "body", "end: the range may span at most 366 days"),
    ({**FUNNEL, "window_s": 91 * 86_400}, "window_s", "less than or equal"),
    ({**FUNNEL, "timezone": "Mars/Olympus"}, "timezone", "IANA"),
    ({**FUNNEL, "breakdown": "user_hash"}, "breakdown", "Input should be"),
    (
        {**FUNNEL, "order": "any", "exclusions": [{"event": "session_end", "to_step": 2}]},
        "body",
        "order: 'any'",
    ),
    ({**FUNNEL, "start": "2026-10-05T00:00:00"}, "start", "UTC offset"),
    ({**FUNNEL, "extra": 1}, "extra", "Extra inputs"),
]


async def test_invalid_definitions_are_422_problems_naming_field_and_reason(migrated: Settings) -> None:
    async with opened_api(_settings(migrated)) as api:
        staff = api.auth(STAFF, roles=["staff"])
        for body, field, reason in INVALID:
            response = await api.client.post(FUNNEL_PATH, json=body, headers=staff)
            assert response.status_code == 422, (body, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            errors = response.json()["errors"]
            assert any(field in e["loc"] and reason in e["msg"] for e in errors), (field, reason, errors)
        response = await api.client.post(
            RETENTION_PATH, json={**RETENTION, "period": "month", "periods": 25}, headers=staff
        )
        assert response.status_code == 422 and "periods: at most 24" in response.text


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(sorted({*FUNNEL, "order", "breakdown", "exclusions", "timezone"}))
    return st.dictionaries(keys, JSON, min_size=1, max_size=3).map(lambda m: {**FUNNEL, **m})


def test_any_body_is_answered_or_refused_never_a_server_error(migrated: Settings) -> None:
    async def ask(bodies: list[Any]) -> list[int]:
        statuses = []
        async with opened_api(_settings(migrated)) as api:
            staff = api.auth(STAFF, roles=["staff"])
            for body in bodies:
                for path in (FUNNEL_PATH, RETENTION_PATH):
                    response = await api.client.post(path, json=body, headers=staff)
                    statuses.append(response.status_code)
                    if response.status_code != 200:
                        assert response.headers["content-type"].startswith("application/problem+json")
        return statuses

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies=st.lists(_mutations() | JSON, min_size=1, max_size=8))
    def check(bodies: list[Any]) -> None:
        for status in asyncio.run(ask(bodies)):
            assert status in (200, 422), status

    check()


async def test_the_store_loads_at_start_up_and_only_new_events_are_read_later(migrated: Settings) -> None:
    first, second = learner_paths(1, learners=20), learner_paths(2, learners=20)
    second = [
        Event(e.user_hash.replace("k1:", "k2:"), e.time_us, e.event_type, e.event_id, e.props) for e in second
    ]
    first = await store_events(migrated, first)
    async with opened_api(_settings(migrated)) as api:
        store: AnalysisStore = api.app.state.analysis
        await until_loaded(store, len(first))  # in the background, before any query
        assert len(store.store) == len(first)
        generation = store.generation
        second = await store_events(migrated, second)
        await until_loaded(store, len(first) + len(second))
        definition = FunnelDefinition(
            steps=(FunnelStep(event="session_start"), FunnelStep(event="session_end")),
            start=EPOCH,
            end=EPOCH.replace(year=2027),
        )
        response = await api.client.post(
            FUNNEL_PATH, json=definition.model_dump(mode="json"), headers=api.auth(STAFF, roles=["staff"])
        )
        assert response.status_code == 200
        assert len(store.store) == len(first) + len(second) and store.generation > generation
        truth = funnel_truth(definition, first + second)
        assert response.json()["groups"][0]["steps"][0]["learners"] == len(truth)
