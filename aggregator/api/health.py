"""Health routes: the process is up (``/healthz``); its dependencies are reachable (``/readyz``)."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisClusterException

from .models import Health, Readiness

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
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
