"""Bad input is a precise 4xx, never a 500: hand-picked cases, then schemathesis on the OpenAPI spec."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from studyin_analytics.aggregator.api import create_app
from studyin_analytics.instrumentation.settings import Settings

from .conftest import LEARNER_A, STAFF, Api, token

PREFIX = "/api/analytics"


async def _problem(
    api: Api, path: str, params: dict[str, Any], loc: list[str] | None, staff: bool = False
) -> None:
    headers = api.auth(STAFF, roles=["staff"]) if staff else api.auth(LEARNER_A)
    response = await api.client.get(path, params=params, headers=headers)
    assert response.status_code == 422, (path, params, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 422 and body["code"]
    if loc is not None:
        assert loc in [e["loc"] for e in body["errors"]], body


async def test_out_of_bounds_parameters_are_422_with_the_field_path(api: Api) -> None:
    overview = f"{PREFIX}/learning/overview"
    await _problem(api, overview, {"days": 0}, ["query", "days"])
    await _problem(api, overview, {"days": 366}, ["query", "days"])
    await _problem(api, overview, {"days": "thirty"}, ["query", "days"])
    await _problem(api, overview, {"dayz": 30}, ["query", "dayz"])  # unknown parameter
    await _problem(api, overview, {"subject": "not-a-pseudonym"}, ["query", "subject"])

    heatmap = f"{PREFIX}/learning/heatmap"
    today = datetime.now(UTC).date()
    await _problem(api, heatmap, {"tz": "Mars/Olympus_Mons"}, ["query", "tz"])
    await _problem(api, heatmap, {"tz": "../../etc/passwd"}, ["query", "tz"])
    await _problem(
        api, heatmap, {"start": str(today), "end": str(today - timedelta(days=1))}, ["query", "start"]
    )
    await _problem(api, heatmap, {"start": "2020-01-01", "end": "2024-01-01"}, ["query", "start"])
    await _problem(api, heatmap, {"start": "2024-02-30"}, ["query", "start"])
    await _problem(api, heatmap, {"start": "2024-01-01", "end": "9999-12-31"}, ["query", "start"])

    system = f"{PREFIX}/system/metrics"
    await _problem(api, system, {"window": "2y"}, ["query", "window"], staff=True)
    await _problem(api, system, {"limit": 0}, ["query", "limit"], staff=True)
    await _problem(api, system, {"limit": 501}, ["query", "limit"], staff=True)

    response = await api.client.get(f"{PREFIX}/nothing-here", headers=api.auth(LEARNER_A))
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    response = await api.client.delete(f"{PREFIX}/learning/overview", headers=api.auth(LEARNER_A))
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_any_date_alone_is_a_heatmap_range(api: Api) -> None:
    """A year-1 end once answered 500 (its default start underflowed): every date Python and the
    schema allow is a valid start or end on its own, the range stopping at the ends of time."""
    heatmap = f"{PREFIX}/learning/heatmap"
    cases = [
        ({"end": "0001-01-01"}, "0001-01-01", "0001-01-01"),
        ({"end": "0001-03-01"}, "0001-01-01", "0001-03-01"),
        ({"start": "0001-01-01"}, "0001-01-01", "0001-12-31"),
        ({"start": "9999-12-31"}, "9999-12-31", "9999-12-31"),
        ({"end": "9999-12-31", "tz": "Pacific/Kiritimati"}, "9999-01-01", "9999-12-31"),
        ({"start": "2000-01-01"}, "2000-01-01", "2000-12-30"),  # 365 days from start
        ({"start": "0001-01-01", "end": "0001-01-02", "tz": "America/Adak"}, "0001-01-01", "0001-01-02"),
    ]
    for params, start, end in cases:
        response = await api.client.get(heatmap, params=params, headers=api.auth(LEARNER_A))
        assert response.status_code == 200, (params, response.text)
        body = response.json()
        assert (body["start"], body["end"]) == (start, end), params
        assert len(body["days"]) == (date.fromisoformat(end) - date.fromisoformat(start)).days + 1


async def test_health_and_openapi(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    spec = (await api.client.get("/openapi.json")).json()
    paths = set(spec["paths"])
    for path in ("overview", "heatmap"):
        assert f"{PREFIX}/learning/{path}" in paths
    assert {f"{PREFIX}/gamification/progress", f"{PREFIX}/system/metrics", f"{PREFIX}/events/track"} <= paths
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    error = spec["paths"][f"{PREFIX}/learning/overview"]["get"]["responses"]["401"]
    assert list(error["content"]) == ["application/problem+json"]


# --- schemathesis: generated requests against the published spec ------------------------------


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_generated_requests_never_get_a_server_error(migrated: Settings) -> None:
    """Positive and negative cases for every operation of the published spec, staff token attached.

    Bounded: a few examples per operation and mode, derandomized, so it runs in seconds.
    """
    app = create_app(migrated)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"authorization": f"Bearer {token(migrated, STAFF, roles=['staff'])}"}
    # Event streams never end on their own: generated calls would only wait for a timeout.
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if "text/event-stream" not in json.dumps(op.definition.raw.get("responses", {}))
    ]
    assert len(operations) >= 8
    # negative_data_rejection is left out: the token added here repairs the "missing
    # Authorization header" that negative cases often consist of.
    calls = 0
    try:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(mode))
                @settings(
                    max_examples=25,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def run(case: Any) -> None:
                    nonlocal calls
                    calls += 1
                    case.call_and_validate(headers=headers, checks=CHECKS)

                try:
                    run()
                except Unsatisfiable:
                    # Nothing to make invalid (no parameters, no body): only the positive run counts.
                    assert mode is GenerationMode.NEGATIVE
    finally:
        schemathesis_asgi.shutdown_lifespans()  # close the app's pools before the schema is dropped
    assert calls >= len(operations) * 2
