"""Full route templates on real FastAPI/Starlette apps through the real middleware.

Routers under prefixes (``include_router(prefix=...)``, nested, ``APIRouter(prefix=...)``), mounted
sub-applications (``app.mount``) and Starlette ``Mount``/``Host`` with path parameters, static files,
framework routes the scope does not name (``/openapi.json``, ``/docs``), 405s and 404s: every
request gets its full template, or the ``_OTHER`` placeholder, never a raw path segment. Explicit
(``instrument_app``) and zero-code (``StudyInInstrumentor``) alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route
from starlette.staticfiles import StaticFiles

from studyin_analytics.instrumentation import StudyInInstrumentor, instrument_app, semconv
from tests.support.pipeline import PSEUDONYMIZER, STATIC_FILE, Pipeline


def _plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def items_router() -> APIRouter:
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    @router.put("/items/{item_id}")
    async def put_item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    nested = APIRouter(prefix="/reviews")

    @nested.get("/{review_id}")
    async def review(review_id: str) -> dict[str, str]:
        return {"id": review_id}

    router.include_router(nested, prefix="/items/{item_id}")
    router.add_route("/plain/{name}", _plain)  # a Starlette route inside an included router
    return router


def build_app(static_dir: Path) -> FastAPI:
    """The layout of real FastAPI apps: one router under two version prefixes, an organisation
    sub-app, static files, a plain Starlette app with nested mounts, and a host-routed app."""
    app = FastAPI()
    router = items_router()
    app.include_router(router, prefix="/api/v1")
    app.include_router(router, prefix="/api/v2")
    users = APIRouter(prefix="/users", tags=["users"])

    @users.get("/{username}")
    async def user(username: str) -> dict[str, str]:
        return {"username": username}

    app.include_router(users)

    organisation = FastAPI()

    @organisation.get("/members/{member_id}")
    async def member(member_id: str) -> dict[str, str]:
        return {"id": member_id}

    organisation.include_router(items_router(), prefix="/shop")
    app.mount("/orgs/{org_id}", organisation)
    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    legacy = Starlette(
        routes=[Mount("/teams/{team_id}", routes=[Route("/boards/{board_id}", _plain)]), Route("/", _plain)]
    )
    app.mount("/legacy", legacy)
    app.router.routes.append(
        Host("{tenant}.reports.test", app=Starlette(routes=[Route("/reports/{report_id}", _plain)]))
    )
    return app


# (method, path, status, template); every id-like segment below is a value that must not appear.
CASES = [
    ("GET", "/api/v1/items/i-111", 200, "/api/v1/items/{item_id}"),
    ("GET", "/api/v2/items/i-111", 200, "/api/v2/items/{item_id}"),
    ("PUT", "/api/v1/items/i-111", 200, "/api/v1/items/{item_id}"),
    ("GET", "/api/v1/items/i-111/reviews/r-222", 200, "/api/v1/items/{item_id}/reviews/{review_id}"),
    ("GET", "/api/v2/plain/n-333", 200, "/api/v2/plain/{name}"),
    ("GET", "/users/u-444", 200, "/users/{username}"),
    ("GET", "/orgs/o-555/members/m-666", 200, "/orgs/{org_id}/members/{member_id}"),
    ("GET", "/orgs/o-555/shop/items/i-111", 200, "/orgs/{org_id}/shop/items/{item_id}"),
    ("GET", "/orgs/o-555/openapi.json", 200, "/orgs/{org_id}/openapi.json"),
    ("GET", "/orgs/o-555/nothing-777", 404, "/orgs/{org_id}/{path}"),
    ("GET", f"/static/{STATIC_FILE}", 200, "/static/{path}"),
    ("GET", "/static/missing-888.txt", 404, "/static/{path}"),
    ("GET", "/legacy/teams/t-999/boards/b-123", 200, "/legacy/teams/{team_id}/boards/{board_id}"),
    ("GET", "/legacy/teams/t-999/nope-234", 404, "/legacy/teams/{team_id}/{path}"),
    ("GET", "/openapi.json", 200, "/openapi.json"),
    ("GET", "/docs", 200, "/docs"),
    ("DELETE", "/api/v1/items/i-111", 405, "/api/v1/items/{item_id}"),
    ("GET", "/wp-admin/setup-345.php", 404, "_OTHER"),
    ("GET", "/api/v3/items/i-111", 404, "_OTHER"),
]
RAW_VALUES = ("111", "222", "333", "444", "555", "666", "777", "888", "999", "123", "234", "345", STATIC_FILE)


async def call(app: Any, method: str, path: str, host: str = "studyin.test") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        return await client.request(method, path)


def routes_of(pipeline: Pipeline) -> list[tuple[str, str, int]]:
    out = []
    for span in pipeline.spans():
        attributes = dict(span.attributes or {})
        out.append((span.name, str(attributes["http.route"]), int(attributes["http.status_code"])))  # type: ignore[arg-type]
    return out


def instrumented(pipeline: Pipeline, static_dir: Path) -> FastAPI:
    return instrument_app(  # type: ignore[no-any-return]
        build_app(static_dir),
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
        pseudonymizer=PSEUDONYMIZER,
    )


async def assert_full_templates(app: Any, pipeline: Pipeline) -> None:
    for method, path, status, _template in CASES:
        assert (await call(app, method, path)).status_code == status, (method, path)
    assert (await call(app, "GET", "/reports/rep-456", host="acme.reports.test")).status_code == 200
    expected = [
        (f"{method} {template}" if template != "_OTHER" else method, template, status)
        for method, _path, status, template in CASES
    ]
    expected.append(("GET /reports/{report_id}", "/reports/{report_id}", 200))
    assert routes_of(pipeline) == expected
    recorded = repr([(span.name, dict(span.attributes or {}), span.events) for span in pipeline.spans()])
    assert not [value for value in (*RAW_VALUES, "456", "acme") if value in recorded]


async def test_full_templates_with_instrument_app(pipeline: Pipeline, static_dir: Path) -> None:
    await assert_full_templates(instrumented(pipeline, static_dir), pipeline)


async def test_full_templates_zero_code(pipeline: Pipeline, static_dir: Path) -> None:
    instrumentor = StudyInInstrumentor()
    instrumentor.instrument(
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
        pseudonymizer=PSEUDONYMIZER,
    )
    try:
        await assert_full_templates(build_app(static_dir), pipeline)
    finally:
        instrumentor.uninstrument()


async def test_two_prefixes_stay_two_routes_in_the_histogram(pipeline: Pipeline, static_dir: Path) -> None:
    app = instrumented(pipeline, static_dir)
    for version, times in (("v1", 3), ("v2", 2)):
        for n in range(times):
            await call(app, "GET", f"/api/{version}/items/i-{n}")
    await call(app, "GET", "/no/such/path")
    counts = {
        (attributes["http.target"], attributes["http.status_code"]): count
        for attributes, count in pipeline.histogram_points("http.server.duration")
    }
    assert counts == {
        ("/api/v1/items/{item_id}", 200): 3,
        ("/api/v2/items/{item_id}", 200): 2,
        ("_OTHER", 404): 1,
    }


async def test_metrics_only_requests_get_the_full_template(pipeline: Pipeline, static_dir: Path) -> None:
    app = instrument_app(
        build_app(static_dir),
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
        metrics_only=True,
    )
    await call(app, "GET", "/orgs/o-1/shop/items/i-2")
    await call(app, "GET", "/nowhere")
    routes = {
        attributes["http.target"] for attributes, _ in pipeline.histogram_points("http.server.duration")
    }
    assert routes == {"/orgs/{org_id}/shop/items/{item_id}", "_OTHER"}
    assert pipeline.spans() == []


async def test_a_server_root_path_stays_in_front(pipeline: Pipeline, static_dir: Path) -> None:
    """``uvicorn --root-path /gateway``: configuration, kept as the prefix of every template."""
    app = instrumented(pipeline, static_dir)
    transport = httpx.ASGITransport(app=app, root_path="/gateway")
    async with httpx.AsyncClient(transport=transport, base_url="http://studyin.test") as client:
        assert (await client.get("/gateway/orgs/o-9/members/m-9")).status_code == 200
        assert (await client.get("/gateway/api/v1/items/i-9")).status_code == 200
    assert [route for _name, route, _status in routes_of(pipeline)] == [
        "/gateway/orgs/{org_id}/members/{member_id}",
        "/gateway/api/v1/items/{item_id}",
    ]


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~%@", min_size=1, max_size=24).filter(
    lambda s: s not in (".", "..") and "%" not in s[-2:]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(org=segment, member=segment, item=segment)
async def test_no_path_value_ever_becomes_a_route(
    org: str, member: str, item: str, pipeline: Pipeline, static_dir: Path
) -> None:
    """Any values in any parameter position: the route is one of the templates or the placeholder."""
    pipeline.exporter.clear()
    app = instrumented(pipeline, static_dir)
    for path in (f"/orgs/{org}/members/{member}", f"/orgs/{org}/shop/items/{item}", f"/{org}/{member}"):
        await call(app, "GET", path)
    templates = {template for *_rest, template in CASES} | {"/orgs/{org_id}/shop/items/{item_id}"}
    for _name, route, _status in routes_of(pipeline):
        assert route in templates, route


def test_placeholder_is_no_template() -> None:
    assert semconv.UNMATCHED_ROUTE == "_OTHER" and not semconv.UNMATCHED_ROUTE.startswith("/")
