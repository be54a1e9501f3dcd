"""Dependencies shared by the query API's routers: the caller, the pool, the settings, audited subjects.

Everything a request needs lives on ``app.state`` (set by :func:`.app.create_app` and its
lifespan); these functions hand it to the routes as FastAPI dependencies.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from ...instrumentation.settings import Settings
from . import audit
from .auth import ApiProblem, Principal, TokenVerifier, require_staff, resolve_subject

PREFIX = "/api/analytics"
"""Where every analytics endpoint lives."""

bearer = HTTPBearer(auto_error=False, description="JWT (HS256 or RS256) with sub, aud, iss, exp")


def caller(request: Request, _credentials: Annotated[Any, Depends(bearer)]) -> Principal:
    """The authenticated caller (``401`` problem otherwise)."""
    verifier: TokenVerifier = request.app.state.verifier
    return verifier(request)


Caller = Annotated[Principal, Depends(caller)]


def pool(request: Request) -> asyncpg.Pool:
    """The app's PostgreSQL pool."""
    value: asyncpg.Pool = request.app.state.pool
    return value


Db = Annotated[asyncpg.Pool, Depends(pool)]


def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    value: Settings = request.app.state.settings
    return value


AppSettings = Annotated[Settings, Depends(app_settings)]


async def audited_subject(
    db: asyncpg.Pool, principal: Principal, endpoint: str, subject: str | None
) -> tuple[str, ...]:
    """The pseudonyms to read; a refused attempt is audited before the 403 goes out."""
    try:
        return resolve_subject(principal, subject)
    except ApiProblem:
        await audit.record(db, principal, endpoint, subject=subject, outcome="denied")
        raise


async def require_staff_audited(
    db: asyncpg.Pool, principal: Principal, endpoint: str, scope: audit.Scope
) -> None:
    """Staff pass; anyone else's attempt is audited, then refused with ``403``."""
    if not principal.is_staff:
        await audit.record(db, principal, endpoint, subject=None, scope=scope, outcome="denied")
        require_staff(principal)
