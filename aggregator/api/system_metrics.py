"""System route (staff): per-route request figures, active users and the pipeline's lag."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
import redis.asyncio as aioredis
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from redis.exceptions import RedisClusterException

from ...exporter.bus import group_lag, stream_keys
from ...exporter.connection import AsyncClient
from ...instrumentation.settings import Settings
from . import audit
from .deps import PREFIX, AppSettings, Caller, Db, require_staff_audited
from .etag import cached_json
from .models import WINDOW_MINUTES, MetricsWindow, PipelineLag, RouteMetrics, SystemMetrics
from .params import SystemParams
from .problems import READ_RESPONSES
from .queries import ACTIVE_USERS_SQL
from .system import BlockCache

_log = logging.getLogger("studyin_analytics.aggregator.api.app")

SYSTEM_PATH = f"{PREFIX}/system/metrics"
SYSTEM_METRICS_TTL_S = 10
"""System metrics are shared by all staff and change by the minute: computed at most once per
window and page size in this many seconds (the same figure as their ``Cache-Control`` max-age)."""

router = APIRouter()


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


async def read_system_metrics(
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


@router.get(SYSTEM_PATH, response_model=SystemMetrics, responses=READ_RESPONSES, tags=["staff"])
async def system_metrics(
    request: Request,
    caller: Caller,
    db: Db,
    settings: AppSettings,
    params: Annotated[SystemParams, Query()],
) -> Response:
    """Per route: requests, error rate by type, p50/p95/p99; active users; pipeline lag. Staff only."""
    await require_staff_audited(db, caller, SYSTEM_PATH, "system")
    key = (params.window, params.limit)
    cache: dict[tuple[MetricsWindow, int], tuple[float, SystemMetrics]] = request.app.state.system_cache
    hit = cache.get(key)
    async with db.acquire() as conn:
        if hit is not None and hit[0] > time.monotonic():
            metrics = hit[1]
        else:
            metrics = await read_system_metrics(
                conn, request.app.state.redis, settings, params, request.app.state.block_cache
            )
            ttl = request.app.state.system_metrics_ttl_s
            if ttl > 0:
                cache[key] = (time.monotonic() + ttl, metrics)
        await audit.record(conn, caller, SYSTEM_PATH, subject=None, scope="system")
    return cached_json(request, metrics, max_age=SYSTEM_METRICS_TTL_S)
