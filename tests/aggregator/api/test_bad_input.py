"""Bad input is a precise 4xx, never a 500: hand-picked cases (schemathesis: test_schemathesis.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from tests.support.api import LEARNER_A, STAFF, Api

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
    # schemathesis: pydantic alone took 0 and 1700000000 for dates (Unix times); the schema says a date.
    for not_a_date in ("0", "1700000000", "2024-01-01T00:00:00", "20240101"):
        await _problem(api, heatmap, {"start": not_a_date}, ["query", "start"])
        await _problem(api, heatmap, {"end": not_a_date}, ["query", "end"])

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


async def test_the_heatmap_time_zones_are_an_enum_the_server_honours(api: Api) -> None:
    """schemathesis sent a schema-valid tz (any string) and got a 422: the spec now lists the
    names, those Python and PostgreSQL both know, and every one of them is accepted."""
    spec = (await api.client.get("/openapi.json")).json()
    (tz,) = [p for p in spec["paths"][f"{PREFIX}/learning/heatmap"]["get"]["parameters"] if p["name"] == "tz"]
    zones = tz["schema"]["enum"]
    assert "UTC" in zones and "Europe/Berlin" in zones and len(zones) > 300
    for zone in [*zones[:: max(1, len(zones) // 25)], "Pacific/Kiritimati", "America/St_Johns"]:
        response = await api.client.get(
            f"{PREFIX}/learning/heatmap", params={"tz": zone}, headers=api.auth(LEARNER_A)
        )
        assert response.status_code == 200, (zone, response.text)


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
