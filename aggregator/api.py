"""The query API over the analytics tables (FastAPI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ..instrumentation.privacy import Pseudonymizer
from ..instrumentation.settings import Settings, require
from .auth import Principal, TokenVerifier
from .db import create_pool


class DailyActivity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    day: date
    sessions: int
    study_minutes: float
    materials_viewed: int
    materials_completed: int
    xp: int


class LearningOverview(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int
    sessions: int
    study_minutes: float
    materials_viewed: int
    materials_completed: int
    xp: int
    daily: list[DailyActivity]


OVERVIEW_SQL = """
SELECT day, sum(sessions)::int AS sessions, sum(study_seconds) AS study_seconds,
       sum(materials_viewed)::int AS materials_viewed,
       sum(materials_completed)::int AS materials_completed, sum(xp)::bigint AS xp
FROM daily_activity_summary
WHERE user_hash = ANY($1::text[]) AND day >= $2
GROUP BY day ORDER BY day
"""


def _caller(request: Request) -> Principal:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier(request)


def _pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


Caller = Annotated[Principal, Depends(_caller)]
Db = Annotated[asyncpg.Pool, Depends(_pool)]


def create_app(settings: Settings) -> FastAPI:
    """The query API application for ``settings``."""
    pseudonymizer = Pseudonymizer.from_settings(settings)
    verifier = TokenVerifier(settings, pseudonymizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings, min_size=1, max_size=8)
        app.state.redis = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
        try:
            yield
        finally:
            await app.state.pool.close()
            await app.state.redis.aclose()

    app = FastAPI(
        title="StudyIn analytics query API",
        version="1",
        lifespan=lifespan,
    )

    app.state.verifier = verifier

    @app.get("/api/analytics/learning/overview", response_model=LearningOverview)
    async def learning_overview(
        caller: Caller,
        db: Db,
        days: Annotated[
            int, Query(ge=1, le=365, description="Window length in days, ending today (UTC)")
        ] = 30,
    ) -> LearningOverview:
        since = datetime.now(UTC).date() - timedelta(days=days - 1)
        records = await db.fetch(OVERVIEW_SQL, list(caller.user_hashes), since)
        daily = [
            DailyActivity(
                day=r["day"],
                sessions=r["sessions"],
                study_minutes=r["study_seconds"] / 60,
                materials_viewed=r["materials_viewed"],
                materials_completed=r["materials_completed"],
                xp=r["xp"],
            )
            for r in records
        ]
        return LearningOverview(
            days=days,
            sessions=sum(d.sessions for d in daily),
            study_minutes=sum(d.study_minutes for d in daily),
            materials_viewed=sum(d.materials_viewed for d in daily),
            materials_completed=sum(d.materials_completed for d in daily),
            xp=sum(d.xp for d in daily),
            daily=daily,
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await request.app.state.pool.fetchval("SELECT 1")
            checks["postgres"] = "ok"
        except (OSError, asyncpg.PostgresError) as exc:
            checks["postgres"] = type(exc).__name__
        try:
            await request.app.state.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # any connection failure means not ready
            checks["redis"] = type(exc).__name__
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app
