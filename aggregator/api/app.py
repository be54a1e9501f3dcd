"""The query API over the analytics rollups (FastAPI).

Every ``/api/analytics`` endpoint needs a bearer JWT (:mod:`.auth`); GETs read rollup tables
only, never raw events, and every read of user data is written to the access audit log
(:mod:`.audit`) before the data leaves. Errors are ``application/problem+json`` (RFC 9457)
with a machine-readable ``code``; validation errors carry the field path. Events posted by
the frontend go through the same tracker, privacy guard and Redis exporter as the backend's.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from http import HTTPStatus
from typing import Annotated, Any

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from redis.exceptions import RedisClusterException
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...exporter import RedisStreamSpanExporter
from ...exporter.bus import group_lag, stream_keys
from ...exporter.connection import AsyncClient, async_client
from ...exporter.runtime import correlation
from ...exporter.runtime.selftelemetry import METRICS_PATH, ApiTelemetry, HTTPServerMetrics
from ...instrumentation import events, semconv
from ...instrumentation.privacy import PSEUDONYM_PATTERN, Pseudonymizer
from ...instrumentation.tracker import EventRejected, StudyInTracker
from ..storage.db import create_pool
from . import audit
from .auth import ApiProblem, Principal, TokenVerifier, forbidden, require_staff, resolve_subject
from .live import LiveHub
from .models import (
    WINDOW_MINUTES,
    CohortDay,
    CohortOverview,
    DailyActivity,
    FieldError,
    GamificationProgress,
    Health,
    Heatmap,
    HeatmapDay,
    LearningOverview,
    MetricsWindow,
    PipelineLag,
    Problem,
    Readiness,
    RouteMetrics,
    Streaks,
    SystemMetrics,
    TrackItemResult,
    TrackRequest,
    TrackResponse,
    XpPoint,
)
from .settings import ApiSettings as Settings
from .system import BlockCache

_log = logging.getLogger(__name__)

PREFIX = "/api/analytics"
PROBLEM_MEDIA_TYPE = "application/problem+json"
MAX_HEATMAP_DAYS = 366
HEATMAP_DEFAULT_DAYS = 365
POOL_SIZE = 8
SYSTEM_METRICS_TTL_S = 10
"""System metrics are shared by all staff and change by the minute: computed at most once per
window and page size in this many seconds (the same figure as their ``Cache-Control`` max-age)."""

CLIENT_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "session_start",
        "session_end",
        "material_view",
        "material_progress",
        "material_complete",
        "ai_coach_feedback",
    }
)
"""Event types the frontend may report. XP, levels, achievements, streaks, AI-coach usage and
API requests are recorded by the backend, which is their authority; a client cannot mint them."""

# --- SQL (rollup tables only) ------------------------------------------------------------------

DAILY_SQL = """
SELECT day, sum(sessions)::int AS sessions, sum(study_seconds)::float8 AS study_seconds,
       sum(materials_viewed)::int AS materials_viewed,
       sum(materials_completed)::int AS materials_completed, sum(xp)::bigint AS xp
FROM daily_activity_summary
WHERE user_hash = ANY($1::text[]) AND day >= $2 AND day <= $3
GROUP BY day HAVING sum(events) > 0 OR sum(sessions) > 0 OR sum(study_seconds) > 0 ORDER BY day
"""
"""A day whose row holds nothing (a session's study time taken back, see aggregator/consumer/sessions.py)
is no day of activity."""

GAMIFICATION_SQL = """
SELECT coalesce(sum(xp_total), 0)::bigint AS xp_total, coalesce(max(level), 1) AS level,
       ARRAY(SELECT DISTINCT a FROM gamification_stats g2, unnest(g2.achievements) a
             WHERE g2.user_hash = ANY($1::text[]) ORDER BY a) AS achievements,
       (array_agg(current_streak ORDER BY streak_as_of DESC NULLS LAST))[1] AS current_streak,
       coalesce(max(longest_streak), 0) AS longest_streak,
       max(streak_as_of) AS streak_as_of, max(last_activity_at) AS last_activity_at
FROM gamification_stats
WHERE user_hash = ANY($1::text[])
"""

HEATMAP_SQL = """
SELECT (hour AT TIME ZONE $2)::date AS day, sum(study_seconds)::float8 AS study_seconds,
       sum(sessions)::int AS sessions, sum(events)::int AS events
FROM user_activity_hourly
WHERE user_hash = ANY($1::text[])
  AND hour >= ($3::date::timestamp AT TIME ZONE $2) AND hour < (($4::date + 1)::timestamp AT TIME ZONE $2)
GROUP BY 1
"""
"""The local days ``$3..$4`` in zone ``$2`` as UTC bounds, computed by PostgreSQL: its dates and
timestamps reach far beyond Python's on both sides, so any date the API accepts has bounds."""

ACTIVE_USERS_SQL = """
SELECT count(*)::int FROM gamification_stats WHERE last_activity_at >= $1 AND last_activity_at <= $2
"""
"""A learner was active in the window exactly when their last activity falls in it (the rollup
keeps the latest event time of every learner)."""

COHORT_SQL = """
SELECT (hour AT TIME ZONE 'UTC')::date AS day, max(active_users)::int AS peak,
       sum(sessions)::int AS sessions, sum(study_seconds)::float8 AS study_seconds,
       sum(materials_viewed)::int AS materials_viewed,
       sum(materials_completed)::int AS materials_completed, sum(xp)::bigint AS xp,
       sum(ai_interactions)::int AS ai_interactions
FROM hourly_analytics_summary
WHERE hour >= $1 AND hour < $2
GROUP BY 1 HAVING sum(events) > 0 OR sum(sessions) > 0 OR sum(study_seconds) > 0 ORDER BY 1
"""


# --- helpers ----------------------------------------------------------------------------------


def _today() -> date:
    return datetime.now(UTC).date()


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


async def supported_time_zones(pool: asyncpg.Pool) -> frozenset[str]:
    """The IANA names both Python and PostgreSQL know (the heatmap needs both); Python's alone
    if the database cannot say."""
    try:
        names = {r[0] for r in await pool.fetch("SELECT name FROM pg_timezone_names", timeout=10)}
    except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError) as exc:
        _log.warning("cannot read PostgreSQL's time zones (%s): offering Python's", type(exc).__name__)
        return _time_zones()
    return _time_zones() & (names | {"UTC"})


def current_streak(reported: int | None, as_of: datetime | None, today: date) -> int:
    """The streak the app last reported, or 0 if it was not extended yesterday or today (UTC).

    ``gamification_stats`` keeps the last reported value; a learner who stopped studying a
    week ago has no current streak, whatever was reported then.
    """
    if not reported or as_of is None:
        return 0
    return reported if as_of.astimezone(UTC).date() >= today - timedelta(days=1) else 0


def _days_from(day: date, days: int) -> date:
    """``day`` moved by ``days``, stopping at the first or last day a date can be."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


def heatmap_range(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The heatmap's days: as given, or 365 days from the one given, or the 365 ending today.

    Any date is a valid ``start`` or ``end`` on its own (the year 1 included: a default computed
    from it stops at the first day a date can be); only the two together can be inconsistent.
    """
    span = HEATMAP_DEFAULT_DAYS - 1
    if start is not None and end is not None:
        return start, end
    if start is not None:
        return start, _days_from(start, span)
    last = end if end is not None else today
    return _days_from(last, -span), last


def intensity_level(minutes: float) -> int:
    """Heatmap intensity: 0 none, 1 under 15 min, 2 under 30, 3 under 60, 4 an hour or more."""
    if minutes <= 0:
        return 0
    if minutes < 15:
        return 1
    if minutes < 30:
        return 2
    if minutes < 60:
        return 3
    return 4


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[FieldError] | None = None,
) -> JSONResponse:
    body = Problem(
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        code=code,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def bad_request(code: str, detail: str, loc: list[str | int]) -> ApiProblem:
    error = FieldError(loc=loc, msg=detail, type=code)
    return ApiProblem(422, code, detail, extra={"errors": [error]})


def _field_errors(errors: Any) -> list[FieldError]:
    out = []
    for item in errors:
        loc = [p if isinstance(p, int) else str(p) for p in item.get("loc", ())]
        out.append(FieldError(loc=loc, msg=str(item.get("msg", "invalid")), type=str(item.get("type", ""))))
    return out


def cached_json(request: Request, model: BaseModel, *, max_age: int) -> Response:
    """The model as JSON with a strong ETag; ``304`` when the client already has it.

    Responses are per caller, so caches may keep them only privately (``Vary: Authorization``).
    """
    body = model.model_dump_json().encode()
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={max_age}",
        "Vary": "Authorization",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and (
        if_none_match.strip() == "*"
        or etag in [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type="application/json", headers=headers)


def _client_item_errors(
    settings: Settings, index: int, event_type: str, data: dict[str, Any]
) -> tuple[type[events.DomainEvent] | None, list[FieldError]]:
    """The model of one tracked item and what is wrong with it (nothing: it may be emitted).

    Beyond the domain model's checks, what a client reports is held to what a client may know:
    a session's ``duration_s`` is at most ``client_session_max_s`` (docs/api.md, per event type).
    """
    loc: list[str | int] = ["body", "events", index]
    model = events.EVENT_TYPES.get(event_type)
    if model is None or event_type not in CLIENT_EVENT_TYPES:
        reason = "unknown event type" if model is None else "clients may not report this event type"
        return None, [FieldError(loc=[*loc, "type"], msg=reason, type="event_type")]
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        return model, [
            FieldError(
                loc=[*loc, "data", *[p if isinstance(p, int) else str(p) for p in e["loc"]]],
                msg=e["msg"],
                type=e["type"],
            )
            for e in exc.errors(include_input=False, include_url=False)
        ]
    if isinstance(event, events.SessionEnd) and event.duration_s > settings.client_session_max_s:
        limit = f"{settings.client_session_max_s:g}"
        return model, [
            FieldError(
                loc=[*loc, "data", "duration_s"],
                msg=f"a client may report a session of at most {limit} s (client_session_max_s)",
                type="less_than_equal",
            )
        ]
    return model, []


# --- request-body limit -------------------------------------------------------------------------

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class BodySizeLimit:
    """Reads at most ``max_bytes`` of a request body; larger bodies get ``413`` problem+json.

    The body is buffered (it is at most ``max_bytes``) and replayed to the app, so the limit
    holds whether or not the client sent ``Content-Length``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        _log.info("refused request: 413 body_too_large (limit %d bytes)", self.max_bytes)
        response = problem_response(
            413,
            "body_too_large",
            f"request body exceeds {self.max_bytes} bytes",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        await self.app(scope, replay, send)


def _route(request: Request) -> str | None:
    """The matched route's template, for log records: never the raw path, which can hold anything."""
    template = getattr(request.scope.get("route"), "path_format", None)
    return str(template) if template else None


def _log_refusal(request: Request, status: int, code: str, detail: str = "") -> None:
    """One record per refused request, at INFO (DEBUG off any route: scanners), without values.

    ``code`` is one of this code base's problem codes; the route is the template. The request's
    correlation id (echoed in ``X-Request-ID``) ties the record to the response.
    """
    route = _route(request)
    level = logging.INFO if route is not None else logging.DEBUG
    _log.log(level, "refused %s: %d %s%s", route or "unrouted request", status, code, detail)


# --- query-parameter models (unknown parameters are rejected) ----------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OverviewParams(_Params):
    days: int = Field(default=30, ge=1, le=365, description="Window length in days, ending today (UTC)")
    subject: str | None = Field(
        default=None,
        pattern=PSEUDONYM_PATTERN.pattern,
        description="Pseudonym (user.hash) to read; default and only allowed value: the caller's own.",
    )


def _iso_date(value: Any) -> Any:
    """Only ``YYYY-MM-DD``, as the schema says: pydantic alone would take ``0`` (a Unix time)."""
    if isinstance(value, str) and not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
IsoDate = Annotated[date, BeforeValidator(_iso_date)]


class HeatmapParams(_Params):
    tz: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="IANA time zone, e.g. Europe/Berlin (the names both this server and its database know)",
    )
    start: IsoDate | None = Field(
        default=None, description="First day (default: 364 days before end); at most 366 days before end"
    )
    end: IsoDate | None = Field(
        default=None, description="Last day (default: 364 days after start if given, else today in tz)"
    )
    subject: str | None = Field(
        default=None, pattern=PSEUDONYM_PATTERN.pattern, description="As for overview"
    )


class SystemParams(_Params):
    window: MetricsWindow = Field(default=MetricsWindow.H1, description="Time window ending now")
    limit: int = Field(default=100, ge=1, le=500, description="Most routes returned (busiest first)")


class CohortParams(_Params):
    days: int = Field(default=30, ge=1, le=365, description="Window length in days, ending today (UTC)")


# --- the app --------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="JWT (HS256 or RS256) with sub, aud, iss, exp")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No usable bearer token (code says why)"},
    403: {"model": Problem, "description": "Valid token without the right (code says why)"},
    422: {"model": Problem, "description": "Invalid parameters; errors[].loc is the field path"},
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}


def _caller(request: Request, _credentials: Annotated[Any, Depends(_bearer)]) -> Principal:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier(request)


Caller = Annotated[Principal, Depends(_caller)]


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Db = Annotated[asyncpg.Pool, Depends(_pool)]


async def _subject(
    db: asyncpg.Pool, caller: Principal, endpoint: str, subject: str | None
) -> tuple[str, ...]:
    """The pseudonyms to read; a refused attempt is audited before the 403 goes out."""
    try:
        return resolve_subject(caller, subject)
    except ApiProblem:
        await audit.record(db, caller, endpoint, subject=subject, outcome="denied")
        raise


@dataclass(frozen=True)
class _LearnerWindow:
    hashes: tuple[str, ...]
    since: date
    until: date
    daily: list[asyncpg.Record]
    stats: asyncpg.Record


async def _learner_window(
    db: asyncpg.Pool, caller: Principal, endpoint: str, params: OverviewParams
) -> _LearnerWindow:
    """A learner's daily rollup over ``params.days`` and gamification state, the read audited."""
    hashes = await _subject(db, caller, endpoint, params.subject)
    until = _today()
    since = until - timedelta(days=params.days - 1)
    async with db.acquire() as conn:
        daily = await conn.fetch(DAILY_SQL, list(hashes), since, until)
        stats = await conn.fetchrow(GAMIFICATION_SQL, list(hashes))
        await audit.record(conn, caller, endpoint, subject=hashes[0])
    assert stats is not None  # an aggregate query always returns one row
    return _LearnerWindow(hashes, since, until, daily, stats)


async def pipeline_lag(client: AsyncClient, settings: Settings) -> PipelineLag:
    """Bus entries the aggregator group has not acknowledged yet, and the oldest one's age."""
    behind = pending = 0
    oldest_ms: int | None = None
    now_ms = int(time.time() * 1000)
    for stream in stream_keys(settings):
        lag = await group_lag(client, stream, settings.consumer_group)
        if lag is None:  # no stream (or group) yet
            continue
        behind += lag.behind
        pending += lag.pending
        candidates = [] if lag.next_id is None else [lag.next_id]
        if lag.pending:
            summary = await client.xpending(stream, settings.consumer_group)
            if summary.get("min"):
                candidates.append(summary["min"])
        for entry_id in candidates:
            raw = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            ms = int(raw.split("-")[0])
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    age = None if oldest_ms is None else max(now_ms - oldest_ms, 0) / 1000
    return PipelineLag(entries_behind=behind, pending=pending, oldest_unprocessed_age_s=age)


async def _system_metrics(
    conn: asyncpg.Connection,
    client: AsyncClient,
    settings: Settings,
    params: SystemParams,
    hours: BlockCache,
) -> SystemMetrics:
    """Per-route figures over the window from the per-minute rollup; active users; bus lag."""
    now = datetime.now(UTC)
    since = now - timedelta(minutes=WINDOW_MINUTES[params.window])
    totals = await hours.window(conn, since, now)
    active = await conn.fetchval(ACTIVE_USERS_SQL, since, now)
    try:
        lag = await pipeline_lag(client, settings)
    except (aioredis.RedisError, RedisClusterException, OSError) as exc:
        _log.warning("pipeline lag unavailable: %s", type(exc).__name__)
        lag = PipelineLag(entries_behind=-1, pending=-1, oldest_unprocessed_age_s=None)
    busiest = sorted(totals.items(), key=lambda item: (-item[1].requests, item[0]))[: params.limit]
    routes = [
        RouteMetrics(
            route=route,
            method=method,
            requests=t.requests,
            errors=t.errors,
            client_errors=t.client_errors,
            error_rate=round(t.errors / t.requests, 6) if t.requests else 0.0,
            errors_by_type=dict(sorted(t.errors_by_type.items())),
            p50_ms=t.quantile(0.5),
            p95_ms=t.quantile(0.95),
            p99_ms=t.quantile(0.99),
            max_ms=t.max_ms,
        )
        for (route, method), t in busiest
    ]
    return SystemMetrics(
        window=params.window, since=since, until=now, routes=routes, active_users=active, pipeline=lag
    )


def create_app(settings: Settings) -> FastAPI:
    """The query API application for ``settings``."""
    pseudonymizer = Pseudonymizer.from_settings(settings)
    verifier = TokenVerifier(settings, pseudonymizer)
    telemetry = ApiTelemetry()  # GET /metrics, OTEL_METRICS_EXPORTER

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
        app.state.tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
        try:
            yield
        finally:
            provider.shutdown()
            await app.state.live_hub.close()
            await app.state.pool.close()
            await app.state.redis.aclose()
            await app.state.health_redis.aclose()
            telemetry.telemetry.shutdown()

    app = FastAPI(
        title="StudyIn analytics query API",
        version="1",
        description=(
            "Learning and system analytics of StudyIn. Every /api/analytics endpoint needs a bearer "
            "JWT; errors are application/problem+json. See docs/api.md."
        ),
        lifespan=lifespan,
    )
    app.state.verifier = verifier
    app.state.settings = settings
    app.state.system_metrics_ttl_s = SYSTEM_METRICS_TTL_S
    app.state.system_cache = {}
    app.state.block_cache = BlockCache()
    app.state.live_hub = LiveHub(settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(HTTPServerMetrics, **telemetry.middleware_options())  # outermost: sees 413s too
    app.state.telemetry = telemetry
    app.add_route(
        METRICS_PATH, telemetry.telemetry.metrics_endpoint, methods=["GET"], include_in_schema=False
    )

    # --- errors as problem+json -------------------------------------------------------------

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        extra = getattr(exc, "extra", {})
        _log_refusal(request, exc.status_code, code)
        return problem_response(
            exc.status_code,
            code,
            str(exc.detail),
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
            errors=extra.get("errors"),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc.errors())
        # The count only: field paths name what the client sent (unknown parameters too).
        _log_refusal(request, 422, "validation_error", f" ({len(errors)} field errors)")
        return problem_response(
            422,
            "validation_error",
            "the request does not match the API's schema; see errors",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(Exception)
    async def server_problem(request: Request, exc: Exception) -> JSONResponse:
        route = _route(request) or "unrouted request"
        _log.error("unhandled %s on %s", type(exc).__name__, route, exc_info=exc)
        return problem_response(500, "internal_error", "internal error", instance=request.url.path)

    # --- learning ---------------------------------------------------------------------------

    overview_path = f"{PREFIX}/learning/overview"

    @app.get(overview_path, response_model=LearningOverview, responses=READ_RESPONSES, tags=["learning"])
    async def learning_overview(
        request: Request, caller: Caller, db: Db, params: Annotated[OverviewParams, Query()]
    ) -> Response:
        """Sessions, study minutes, materials viewed/completed, XP, current streak, daily series."""
        window = await _learner_window(db, caller, overview_path, params)
        hashes, since, until, records, stats = (
            window.hashes,
            window.since,
            window.until,
            window.daily,
            window.stats,
        )
        daily = [
            DailyActivity(
                day=r["day"],
                sessions=r["sessions"],
                study_minutes=round(r["study_seconds"] / 60, 3),
                materials_viewed=r["materials_viewed"],
                materials_completed=r["materials_completed"],
                xp=r["xp"],
            )
            for r in records
        ]
        overview = LearningOverview(
            subject=hashes[0],
            days=params.days,
            since=since,
            until=until,
            sessions=sum(d.sessions for d in daily),
            study_minutes=round(sum(d.study_minutes for d in daily), 3),
            materials_viewed=sum(d.materials_viewed for d in daily),
            materials_completed=sum(d.materials_completed for d in daily),
            xp=sum(d.xp for d in daily),
            current_streak=current_streak(stats["current_streak"], stats["streak_as_of"], until)
            if stats
            else 0,
            daily=daily,
        )
        return cached_json(request, overview, max_age=60)

    heatmap_path = f"{PREFIX}/learning/heatmap"

    @app.get(heatmap_path, response_model=Heatmap, responses=READ_RESPONSES, tags=["learning"])
    async def learning_heatmap(
        request: Request, caller: Caller, db: Db, params: Annotated[HeatmapParams, Query()]
    ) -> Response:
        """Study minutes and an intensity level per calendar day in the caller's time zone."""
        if params.tz not in (getattr(request.app.state, "time_zones", None) or _time_zones()):
            raise bad_request("unknown_time_zone", "tz must be an IANA time zone name", ["query", "tz"])
        today = datetime.now(zoneinfo.ZoneInfo(params.tz)).date()
        start, end = heatmap_range(params.start, params.end, today)
        if start > end:
            raise bad_request("invalid_range", "start must not be after end", ["query", "start"])
        if (end - start).days + 1 > MAX_HEATMAP_DAYS:
            raise bad_request(
                "range_too_long", f"the range may span at most {MAX_HEATMAP_DAYS} days", ["query", "start"]
            )
        hashes = await _subject(db, caller, heatmap_path, params.subject)
        async with db.acquire() as conn:
            try:
                records = await conn.fetch(HEATMAP_SQL, list(hashes), params.tz, start, end)
            except asyncpg.InvalidParameterValueError:  # a zone Python knows and PostgreSQL does not
                raise bad_request(
                    "unknown_time_zone", "this time zone is not supported by the database", ["query", "tz"]
                ) from None
            await audit.record(conn, caller, heatmap_path, subject=hashes[0])
        by_day = {r["day"]: r for r in records}
        days = []
        for offset in range((end - start).days + 1):
            day = start + timedelta(days=offset)
            r = by_day.get(day)
            minutes = round(r["study_seconds"] / 60, 3) if r else 0.0
            days.append(
                HeatmapDay(
                    day=day,
                    minutes=minutes,
                    sessions=r["sessions"] if r else 0,
                    events=r["events"] if r else 0,
                    level=intensity_level(minutes),
                )
            )
        heatmap = Heatmap(
            subject=hashes[0],
            tz=params.tz,
            start=start,
            end=end,
            total_minutes=round(sum(d.minutes for d in days), 3),
            active_days=sum(1 for d in days if d.events > 0),
            days=days,
        )
        return cached_json(request, heatmap, max_age=300)

    # --- gamification ---------------------------------------------------------------------------

    gamification_path = f"{PREFIX}/gamification/progress"

    @app.get(
        gamification_path,
        response_model=GamificationProgress,
        responses=READ_RESPONSES,
        tags=["gamification"],
    )
    async def gamification_progress(
        request: Request, caller: Caller, db: Db, params: Annotated[OverviewParams, Query()]
    ) -> Response:
        """XP trend over the window, level, achievements, current and longest streak."""
        window = await _learner_window(db, caller, gamification_path, params)
        hashes, until, records, stats = window.hashes, window.until, window.daily, window.stats
        trend = []
        cumulative = 0
        for r in records:
            if r["xp"]:
                cumulative += r["xp"]
                trend.append(XpPoint(day=r["day"], xp=r["xp"], cumulative_xp=cumulative))
        progress = GamificationProgress(
            subject=hashes[0],
            days=params.days,
            xp_total=stats["xp_total"],
            xp_in_window=cumulative,
            level=stats["level"],
            achievements=list(stats["achievements"]),
            streaks=Streaks(
                current=current_streak(stats["current_streak"], stats["streak_as_of"], until),
                longest=stats["longest_streak"],
                as_of=stats["streak_as_of"],
            ),
            last_activity_at=stats["last_activity_at"],
            xp_trend=trend,
        )
        return cached_json(request, progress, max_age=60)

    # --- staff views -------------------------------------------------------------------------------

    system_path = f"{PREFIX}/system/metrics"

    @app.get(system_path, response_model=SystemMetrics, responses=READ_RESPONSES, tags=["staff"])
    async def system_metrics(
        request: Request, caller: Caller, db: Db, params: Annotated[SystemParams, Query()]
    ) -> Response:
        """Per route: requests, error rate by type, p50/p95/p99; active users; pipeline lag. Staff only."""
        if not caller.is_staff:
            await audit.record(db, caller, system_path, subject=None, scope="system", outcome="denied")
            require_staff(caller)
        key = (params.window, params.limit)
        cache: dict[tuple[MetricsWindow, int], tuple[float, SystemMetrics]] = request.app.state.system_cache
        hit = cache.get(key)
        async with db.acquire() as conn:
            if hit is not None and hit[0] > time.monotonic():
                metrics = hit[1]
            else:
                metrics = await _system_metrics(
                    conn, request.app.state.redis, settings, params, request.app.state.block_cache
                )
                ttl = request.app.state.system_metrics_ttl_s
                if ttl > 0:
                    cache[key] = (time.monotonic() + ttl, metrics)
            await audit.record(conn, caller, system_path, subject=None, scope="system")
        return cached_json(request, metrics, max_age=SYSTEM_METRICS_TTL_S)

    cohort_path = f"{PREFIX}/cohort/overview"

    @app.get(cohort_path, response_model=CohortOverview, responses=READ_RESPONSES, tags=["staff"])
    async def cohort_overview(
        request: Request, caller: Caller, db: Db, params: Annotated[CohortParams, Query()]
    ) -> Response:
        """Cohort-level learning totals per UTC day (no individual data). Staff only."""
        if not caller.is_staff:
            await audit.record(db, caller, cohort_path, subject=None, scope="cohort", outcome="denied")
            require_staff(caller)
        until = _today()
        since = until - timedelta(days=params.days - 1)
        async with db.acquire() as conn:
            records = await conn.fetch(
                COHORT_SQL, _utc_midnight(since), _utc_midnight(until + timedelta(days=1))
            )
            await audit.record(conn, caller, cohort_path, subject=None, scope="cohort")
        daily = [
            CohortDay(
                day=r["day"],
                peak_hourly_active_users=r["peak"],
                sessions=r["sessions"],
                study_minutes=round(r["study_seconds"] / 60, 3),
                materials_viewed=r["materials_viewed"],
                materials_completed=r["materials_completed"],
                xp=r["xp"],
                ai_interactions=r["ai_interactions"],
            )
            for r in records
        ]
        cohort = CohortOverview(
            days=params.days,
            since=since,
            until=until,
            sessions=sum(d.sessions for d in daily),
            study_minutes=round(sum(d.study_minutes for d in daily), 3),
            materials_viewed=sum(d.materials_viewed for d in daily),
            materials_completed=sum(d.materials_completed for d in daily),
            xp=sum(d.xp for d in daily),
            ai_interactions=sum(d.ai_interactions for d in daily),
            daily=daily,
        )
        return cached_json(request, cohort, max_age=60)

    # --- event tracking ------------------------------------------------------------------------

    track_path = f"{PREFIX}/events/track"

    @app.post(
        track_path,
        response_model=TrackResponse,
        status_code=202,
        responses={
            **ERROR_RESPONSES,
            400: {"model": Problem, "description": "Body is not decodable (e.g. not UTF-8)"},
            413: {"model": Problem, "description": "Body larger than the configured limit"},
        },
        tags=["events"],
    )
    async def track_events(request: Request, caller: Caller, body: TrackRequest) -> TrackResponse:
        """Record frontend events for the caller; each item is validated on its own.

        Accepted items are emitted through the tracker (attributed to the caller's pseudonym)
        and reach the bus through the privacy guard and the Redis exporter.
        """
        tracker: StudyInTracker = request.app.state.tracker
        results: list[TrackItemResult] = []
        valid: list[tuple[int, type[events.DomainEvent], dict[str, Any]]] = []
        for index, item in enumerate(body.events):
            model, errors = _client_item_errors(settings, index, item.type, item.data)
            if errors or model is None:
                results.append(TrackItemResult(index=index, type=item.type, status="rejected", errors=errors))
                continue
            valid.append((index, model, item.data))
            results.append(TrackItemResult(index=index, type=item.type, status="accepted"))
        if valid:
            tracer = request.app.state.tracer
            # One short span per request carries the batch, attributed to the caller's pseudonym.
            with tracer.start_as_current_span(
                semconv.STANDALONE_EVENT_SPAN, attributes={semconv.USER_HASH: caller.user_hash}
            ):
                for index, model, data in valid:
                    try:
                        tracker.emit(model, user_id=caller.user_id, **data)
                    except EventRejected as exc:  # the tracker's own checks (beyond the model)
                        results[index] = TrackItemResult(
                            index=index,
                            type=model.event_type,
                            status="rejected",
                            errors=[FieldError(loc=["body", "events", index], msg=str(exc), type="rejected")],
                        )
        accepted = sum(1 for r in results if r.status == "accepted")
        if accepted < len(results):
            # Counts only: the items' types and fields are what the client sent.
            _log.info("events/track rejected %d of %d items", len(results) - accepted, len(results))
        return TrackResponse(accepted=accepted, rejected=len(results) - accepted, results=results)

    # --- health ---------------------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
        tags=["health"],
    )
    async def readyz(request: Request) -> JSONResponse:
        """Redis and PostgreSQL are reachable."""
        checks: dict[str, str] = {}
        try:
            await request.app.state.pool.fetchval("SELECT 1", timeout=2)
            checks["postgres"] = "ok"
        except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError) as exc:
            checks["postgres"] = type(exc).__name__
        try:
            await request.app.state.health_redis.ping()
            checks["redis"] = "ok"
        except (aioredis.RedisError, RedisClusterException, OSError) as exc:
            checks["redis"] = type(exc).__name__
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(ready=ready, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    # --- OpenAPI: error responses are problem+json --------------------------------------------

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
        zones = sorted(getattr(app.state, "time_zones", None) or _time_zones())
        for parameter in schema["paths"][heatmap_path]["get"]["parameters"]:
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

    app.openapi = openapi  # type: ignore[method-assign]

    from .dashboard import mount_dashboard  # the live feed authenticates with _caller, defined above

    mount_dashboard(app, _caller)
    correlation.install(app)  # request ids in log records and X-Request-ID, 500s included
    return app


__all__ = ["CLIENT_EVENT_TYPES", "create_app", "forbidden", "intensity_level", "pipeline_lag"]
