"""The query API over the analytics rollups (FastAPI): the app factory.

Every ``/api/analytics`` endpoint needs a bearer JWT (:mod:`.auth`, :mod:`.deps`); GETs read
rollup tables only, never raw events, and every read of user data is written to the access
audit log (:mod:`.audit`) before the data leaves. Errors are ``application/problem+json``
(RFC 9457, :mod:`.problems`) with a machine-readable ``code``; validation errors carry the field
path. Events posted by the frontend go through the same tracker, privacy guard and Redis
exporter as the backend's (:mod:`.tracking`).

One router per area: :mod:`.learning`, :mod:`.gamification`, :mod:`.system_metrics`,
:mod:`.cohort`, :mod:`.tracking`, :mod:`.health` and the dashboard (:mod:`.dashboard`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ...exporter import RedisStreamSpanExporter
from ...exporter.connection import async_client
from ...exporter.custom_registry import follow_custom_schemas
from ...exporter.runtime import correlation
from ...exporter.runtime.http_metrics import HTTPServerMetrics
from ...exporter.runtime.selftelemetry import METRICS_PATH
from ...instrumentation import semconv
from ...instrumentation.privacy import Pseudonymizer
from ...instrumentation.tracker import SpanEventCarrier, StudyInTracker
from ..storage.db import create_pool
from . import (
    analysis,
    cohort,
    custom_events,
    experiments,
    gamification,
    health,
    learners,
    learning,
    saved_funnels,
    system_metrics,
    tracking,
)
from .auth import TokenVerifier, forbidden
from .bodylimit import BodySizeLimit
from .dashboard import mount_dashboard
from .days import current_streak, intensity_level, python_time_zones, supported_time_zones
from .deps import PREFIX, caller
from .live import LiveHub
from .problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from .settings import ApiSettings as Settings
from .system import BlockCache
from .system_metrics import SYSTEM_METRICS_TTL_S, pipeline_lag
from .telemetry import ApiTelemetry
from .tracking import CLIENT_EVENT_TYPES

POOL_SIZE = 8

ROUTERS = (
    learning.router,
    gamification.router,
    system_metrics.router,
    cohort.router,
    experiments.router,
    learners.router,
    analysis.router,
    saved_funnels.router,
    tracking.router,
    custom_events.router,
    health.router,
)
"""The areas' routers, in the order of the OpenAPI document (the dashboard's come last)."""


def _lifespan(settings: Settings, pseudonymizer: Pseudonymizer, telemetry: ApiTelemetry) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings, "api", min_size=1, max_size=POOL_SIZE)
        app.state.time_zones = await supported_time_zones(app.state.pool)
        app.state.redis = async_client(settings, socket_timeout=2, socket_connect_timeout=2)
        # Readiness has a client of its own: however busy the requests' client is, /readyz
        # answers for Redis itself (live feeds read the bus on a third, app.state.live_hub).
        app.state.health_redis = async_client(settings, socket_timeout=2, socket_connect_timeout=2)
        # Events posted by the frontend take the backend's path: tracker -> span events ->
        # privacy guard -> Redis exporter (in the batch processor's thread, off the request).
        provider = TracerProvider(resource=Resource.create({"service.name": "studyin-analytics-api"}))
        processor = BatchSpanProcessor(RedisStreamSpanExporter(settings), schedule_delay_millis=200)
        provider.add_span_processor(processor)
        app.state.tracer_provider = provider
        app.state.tracer = provider.get_tracer(semconv.SCOPE_NAME)
        app.state.tracker = StudyInTracker(  # events arrive in requests: span events, never a log record
            tracer_provider=provider, pseudonymizer=pseudonymizer, carrier=SpanEventCarrier.create(provider)
        )
        app.state.custom_schemas = follow_custom_schemas(settings)  # custom events: the registry
        background = saved_funnels.start_background(app)  # loads the funnels' store, warms saved ones
        try:
            yield
        finally:
            await saved_funnels.stop_background(background)
            app.state.custom_schemas.close()
            provider.shutdown()
            await app.state.live_hub.close()
            await app.state.pool.close()
            await app.state.redis.aclose()
            await app.state.health_redis.aclose()
            telemetry.telemetry.shutdown()

    return lifespan


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document of ``app``: the heatmap's zones as an enum, errors as problem+json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        # The time zones are a closed set, too long for a description: an enum, so a client (or
        # a fuzzer) knows which strings the heatmap takes.
        zones = sorted(getattr(app.state, "time_zones", None) or python_time_zones())
        for parameter in schema["paths"][learning.HEATMAP_PATH]["get"]["parameters"]:
            if parameter["name"] == "tz":
                parameter["schema"]["enum"] = zones
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content")
                    problem = status.isdigit() and int(status) >= 400 and status != "503"
                    if problem and content and "application/json" in content:
                        response["content"] = {PROBLEM_MEDIA_TYPE: content["application/json"]}
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(settings: Settings) -> FastAPI:
    """The query API application for ``settings``."""
    pseudonymizer = Pseudonymizer.from_settings(settings)
    telemetry = ApiTelemetry()  # GET /metrics, OTEL_METRICS_EXPORTER
    app = FastAPI(
        title="StudyIn analytics query API",
        version="1",
        description=(
            "Learning and system analytics of StudyIn. Every /api/analytics endpoint needs a bearer "
            "JWT; errors are application/problem+json. See docs/api.md."
        ),
        lifespan=_lifespan(settings, pseudonymizer, telemetry),
    )
    app.state.verifier = TokenVerifier(settings, pseudonymizer)
    app.state.settings = settings
    app.state.system_metrics_ttl_s = SYSTEM_METRICS_TTL_S
    app.state.system_cache = {}
    app.state.block_cache = BlockCache()
    app.state.live_hub = LiveHub(settings)
    analysis.open_store(app, settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(HTTPServerMetrics, **telemetry.middleware_options())  # outermost: sees 413s too
    app.state.telemetry = telemetry
    app.add_route(
        METRICS_PATH, telemetry.telemetry.metrics_endpoint, methods=["GET"], include_in_schema=False
    )
    install_problem_handlers(app)
    for router in ROUTERS:
        # The routes themselves, not ``include_router``: this FastAPI wraps an included router in
        # one opaque entry, and ``app.routes`` must list every path (probes, docs and tests read it).
        app.router.routes.extend(router.routes)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    mount_dashboard(app, caller)  # the live feed authenticates exactly as the API does
    correlation.install(app)  # request ids in log records and X-Request-ID, 500s included
    return app


__all__ = [
    "CLIENT_EVENT_TYPES",
    "PREFIX",
    "SYSTEM_METRICS_TTL_S",
    "create_app",
    "current_streak",
    "forbidden",
    "intensity_level",
    "pipeline_lag",
]
