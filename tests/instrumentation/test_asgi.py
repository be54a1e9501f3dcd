"""ASGI auto-instrumentation: route, status, errors, exclusions, auth paths, attribution, metrics-only."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from studyin_analytics.instrumentation import (
    StudyInASGIMiddleware,
    StudyInInstrumentor,
    instrument_app,
    semconv,
)
from studyin_analytics.instrumentation.asgi import DeferredDurations
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

USER = "student-0042"
EMAIL = "student.0042@example.com"


def build_app() -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def fake_auth(request: Request, call_next: Any) -> Any:
        token = request.headers.get("authorization", "")
        if token.startswith("Bearer "):
            request.state.user_id = token.removeprefix("Bearer ")
        return await call_next(request)

    @app.get("/materials/{material_id}")
    async def material(material_id: str) -> dict[str, str]:
        return {"id": material_id}

    @app.post("/auth/login")
    async def login(request: Request) -> dict[str, str]:
        body = await request.json()
        request.state.user_id = body["email"]  # an app that "logs in" inside the handler
        return {"token": "t"}

    @app.get("/broken/{user_id}")
    async def broken(user_id: str) -> None:
        raise ValueError(f"no profile for {user_id} <{EMAIL}>")

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/hot/{key}")
    async def hot(key: str) -> dict[str, str]:
        return {"key": key}

    return app


async def call(app: Any, method: str, path: str, *, user: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {user}"} if user else {}
    headers["user-agent"] = "Mozilla/5.0 test"
    headers["cookie"] = "session=abc"
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://studyin.test") as client:
        return await client.request(method, path, headers=headers, **kw)


def instrumented(pipeline: Pipeline, **kw: Any) -> Any:
    return instrument_app(
        build_app(),
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
        pseudonymizer=PSEUDONYMIZER,
        **kw,
    )


async def test_server_span_has_route_status_and_user_hash(pipeline: Pipeline, stable_semconv: None) -> None:
    app = instrumented(pipeline)
    assert isinstance(app, FastAPI)  # instrumented in place: still a FastAPI app
    response = await call(app, "GET", f"/materials/{USER}?email={EMAIL}", user=USER)
    assert response.status_code == 200
    span = pipeline.span("GET /materials/{material_id}")
    assert span.kind == SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/materials/{material_id}"
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes[semconv.USER_HASH] == PSEUDONYMIZER.pseudonymize(USER)
    text = repr(attributes) + span.name
    for leak in (USER, EMAIL, "203.0.113.9", "Mozilla", "abc"):
        assert leak not in text, leak
    assert not any(
        k.startswith(("url.", "client.", "user_agent.", "http.request.header.", "network.peer"))
        for k in attributes
        if k != "url.scheme"
    )
    points = pipeline.histogram_points("http.server.request.duration")
    assert points == [
        (
            {
                "http.request.method": "GET",
                "url.scheme": "http",
                "network.protocol.version": "1.1",
                "http.response.status_code": 200,
                "http.route": "/materials/{material_id}",
            },
            1,
        )
    ]


async def test_legacy_semconv_histogram_carries_the_template(pipeline: Pipeline) -> None:
    app = instrumented(pipeline)
    await call(app, "GET", "/materials/cardio-101")
    span = pipeline.span("GET /materials/{material_id}")
    assert dict(span.attributes or {})["http.status_code"] == 200
    (attributes, count), *_ = pipeline.histogram_points("http.server.duration")
    assert count == 1
    assert attributes["http.target"] == "/materials/{material_id}"  # where the stock middleware puts it


async def test_error_records_type_only(pipeline: Pipeline, stable_semconv: None) -> None:
    app = instrumented(pipeline)
    response = await call(app, "GET", f"/broken/{USER}", user=USER)
    assert response.status_code == 500
    span = pipeline.span("GET /broken/{user_id}")
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "ValueError"
    assert attributes["http.response.status_code"] == 500
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("exception", {"exception.type": "ValueError", "exception.escaped": True})
    ]
    (metric_attributes, _), *_ = pipeline.histogram_points("http.server.request.duration")
    assert metric_attributes["error.type"] == "ValueError"
    assert USER not in repr(span.to_json()) and EMAIL not in span.to_json()


async def test_auth_endpoints_are_measured_not_attributed(pipeline: Pipeline) -> None:
    app = instrumented(pipeline)
    response = await call(app, "POST", "/auth/login", user=USER, json={"email": EMAIL})
    assert response.status_code == 200
    span = pipeline.span("POST /auth/login")
    assert semconv.USER_HASH not in (span.attributes or {})
    assert EMAIL not in span.to_json()
    assert pipeline.histogram_points("http.server.duration")[0][1] == 1


async def test_custom_auth_patterns_and_user_hook(pipeline: Pipeline) -> None:
    def hook(scope: Any) -> str | None:
        return "from-hook" if scope["path"].startswith("/materials") else None

    app = instrumented(pipeline, auth_patterns=[r"^/health$"], user_id_hook=hook)
    await call(app, "GET", "/materials/m-1")
    await call(app, "GET", "/health")
    material = pipeline.span("GET /materials/{material_id}")
    assert dict(material.attributes or {})[semconv.USER_HASH] == PSEUDONYMIZER.pseudonymize("from-hook")
    assert semconv.USER_HASH not in (pipeline.span("GET /health").attributes or {})


async def test_failing_hook_never_breaks_the_request(pipeline: Pipeline) -> None:
    def hook(scope: Any) -> str:
        raise KeyError(EMAIL)

    app = instrumented(pipeline, user_id_hook=hook)
    assert (await call(app, "GET", "/materials/m-1")).status_code == 200
    assert semconv.USER_HASH not in (pipeline.span("GET /materials/{material_id}").attributes or {})


async def test_excluded_urls_from_the_standard_variable(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "health,metrics")
    app = instrumented(pipeline)
    await call(app, "GET", "/health")
    await call(app, "GET", "/materials/m-1")
    assert [s.name for s in pipeline.spans()] == ["GET /materials/{material_id}"]
    assert len(pipeline.histogram_points("http.server.duration")) == 1


async def test_generic_excluded_urls_variable(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_PYTHON_ASGI_EXCLUDED_URLS", raising=False)
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/health")
    app = instrumented(pipeline)
    await call(app, "GET", "/health")
    assert pipeline.spans() == []


async def test_metrics_only_paths(pipeline: Pipeline, stable_semconv: None) -> None:
    app = instrumented(pipeline, metrics_only=[r"^/hot/"])
    for _ in range(3):
        assert (await call(app, "GET", "/hot/k1", user=USER)).status_code == 200
    await call(app, "GET", "/materials/m-1")
    assert [s.name for s in pipeline.spans()] == ["GET /materials/{material_id}"]
    points = dict((a["http.route"], n) for a, n in pipeline.histogram_points("http.server.request.duration"))
    assert points == {"/hot/{key}": 3, "/materials/{material_id}": 1}


async def test_metrics_only_everything_records_errors(pipeline: Pipeline, stable_semconv: None) -> None:
    app = instrumented(pipeline, metrics_only=True)
    await call(app, "GET", "/broken/x")
    assert pipeline.spans() == []
    ((attributes, count),) = pipeline.histogram_points("http.server.request.duration")
    assert count == 1 and attributes["error.type"] == "ValueError"
    assert attributes["http.response.status_code"] == 500


async def test_unmatched_path_has_the_placeholder_route_and_no_raw_path(pipeline: Pipeline) -> None:
    app = instrumented(pipeline)
    assert (await call(app, "GET", f"/users/{USER}/secret")).status_code == 404
    (span,) = pipeline.spans()
    assert span.name == "GET"  # the HTTP conventions' name when no route matched
    assert (span.attributes or {})["http.route"] == "_OTHER"
    assert USER not in span.to_json()


async def test_plain_asgi_callable_is_wrapped(pipeline: Pipeline) -> None:
    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    inner = Starlette(routes=[Route("/ping/{n}", endpoint)])

    async def plain(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)

    app = instrument_app(plain, tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    assert isinstance(app, StudyInASGIMiddleware)
    await call(app, "GET", "/ping/3")
    assert [s.name for s in pipeline.spans()] == ["GET /ping/{n}"]


async def test_instrumentor_patches_every_starlette_app_once(pipeline: Pipeline) -> None:
    instrumentor = StudyInInstrumentor()
    instrumentor.instrument(
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
        pseudonymizer=PSEUDONYMIZER,
    )
    try:
        app = build_app()  # an unmodified app
        await call(app, "GET", "/materials/m-1", user=USER)
        explicit = instrumented(pipeline)  # explicit + zero-code: still one server span
        await call(explicit, "GET", "/materials/m-2")
    finally:
        instrumentor.uninstrument()
    spans = pipeline.spans()
    assert [s.name for s in spans] == ["GET /materials/{material_id}"] * 2
    assert all(s.kind == SpanKind.SERVER for s in spans)
    assert dict(spans[0].attributes or {})[semconv.USER_HASH] == PSEUDONYMIZER.pseudonymize(USER)
    await call(build_app(), "GET", "/materials/m-3")  # uninstrumented again
    assert len(pipeline.spans()) == 2


async def test_settings_supply_defaults(pipeline: Pipeline, settings: Any) -> None:
    configured = settings.with_overrides(auth_paths=("^/materials",), metrics_only_paths=("^/health",))
    app = instrument_app(
        build_app(),
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
        settings=configured,
    )
    await call(app, "GET", "/materials/m-1", user=USER)
    await call(app, "GET", "/health")
    (span,) = pipeline.spans()
    assert semconv.USER_HASH not in (span.attributes or {})


async def test_fastapi_builtin_telemetry_is_replaced(pipeline: Pipeline) -> None:
    """Recent FastAPI versions trace by themselves (raw path and query): one server span, ours."""
    app = FastAPI(telemetry={"tracer_provider": pipeline.tracer_provider})  # type: ignore[call-arg]

    @app.get("/materials/{material_id}")
    async def material(material_id: str) -> dict[str, str]:
        return {"id": material_id}

    instrument_app(app, tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    await call(app, "GET", f"/materials/{USER}?email={EMAIL}")
    spans = pipeline.spans()
    assert [s.name for s in spans] == ["GET /materials/{material_id}"]
    assert USER not in spans[0].to_json() and EMAIL not in spans[0].to_json()


async def test_metrics_only_durations_are_exact_across_apps_and_overflow(
    pipeline: Pipeline, stable_semconv: None
) -> None:
    """Deferred recording: every request counted at collection, for every app on the meter."""
    first = instrumented(pipeline, metrics_only=True)
    second = instrumented(pipeline, metrics_only=[r"^/hot/"])
    for _ in range(4):
        await call(first, "GET", "/materials/m-1")
    for _ in range(3):
        await call(second, "GET", "/hot/k")
    deferred = DeferredDurations.for_meter(first.middleware_stack.meter)  # built on first call
    assert deferred is DeferredDurations.for_meter(second.middleware_stack.meter)
    assert deferred.pending() == 7
    deferred.max_pending = 2  # the request that overflows records the backlog itself
    await call(first, "GET", "/materials/m-2")
    assert deferred.pending() == 0
    counts = {a["http.route"]: n for a, n in pipeline.histogram_points("http.server.request.duration")}
    assert counts == {"/materials/{material_id}": 5, "/hot/{key}": 3}
    await call(second, "GET", "/hot/k")
    counts = {a["http.route"]: n for a, n in pipeline.histogram_points("http.server.request.duration")}
    assert counts == {"/materials/{material_id}": 5, "/hot/{key}": 4}  # collection recorded it
    assert deferred.pending() == 0


async def test_lifespan_shutdown_records_pending_durations(pipeline: Pipeline) -> None:
    app = instrumented(pipeline, metrics_only=True)
    await call(app, "GET", "/materials/m-1")
    deferred = DeferredDurations.for_meter(app.middleware_stack.meter)
    assert deferred.pending() == 1
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert deferred.pending() == 0


async def test_traced_durations_recorded_at_collection_keep_their_exemplar(
    pipeline: Pipeline, stable_semconv: None
) -> None:
    """With spans too, the histogram is recorded at collection (off the request), every request
    counted, and its exemplar still points at the request's span."""
    app = instrumented(pipeline)
    await call(app, "GET", "/materials/m-1", user=USER)
    deferred = DeferredDurations.for_meter(app.middleware_stack.meter)
    assert deferred.pending() == 1
    span = pipeline.span("GET /materials/{material_id}")
    data = pipeline.reader.get_metrics_data()
    assert data is not None and deferred.pending() == 0
    (point,) = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "http.server.request.duration"
        for p in m.data.data_points
    ]
    assert point.count == 1  # type: ignore[union-attr]
    (exemplar,) = point.exemplars  # type: ignore[union-attr]
    assert (exemplar.trace_id, exemplar.span_id) == (span.context.trace_id, span.context.span_id)
