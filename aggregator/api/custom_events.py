"""Custom event routes (staff): the schema registry (list, register) and the per-type daily counts.

Registration follows the same rules as ``studyin-analytics schemas register`` (one function,
``aggregator/custom/registry.register``); a refusal is a 422 problem naming each JSON pointer of the schema
and its reason; an accepted version is published to applications at once. Every call is audited.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ...exporter.snapshots import publish_snapshot_async
from ...instrumentation.custom_schemas import SchemaRefused
from ..custom import registry
from . import audit
from .auth import ApiProblem
from .days import today
from .deps import PREFIX, Caller, Db, require_staff_audited
from .models import FieldError, Problem
from .problems import ERROR_RESPONSES, READ_RESPONSES

SCHEMAS_PATH = f"{PREFIX}/custom-events/schemas"
DAILY_PATH = f"{PREFIX}/custom-events/daily"

router = APIRouter()


class SchemaVersionOut(BaseModel):
    name: str
    version: str
    level: str
    registered_at: str
    registered_by: str
    deprecated_at: str | None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class RegisterRequest(BaseModel):
    name: str = Field(max_length=200, examples=["org.example/case_completed"])
    version: str = Field(max_length=20, examples=["1-0-0"])
    schema_: dict[str, Any] = Field(
        alias="schema", description="JSON Schema (draft 2020-12, the flat subset)"
    )


class CustomDaily(BaseModel):
    day: str
    event_type: str
    events: int


@router.get(SCHEMAS_PATH, response_model=list[SchemaVersionOut], responses=READ_RESPONSES, tags=["staff"])
async def list_schemas(
    caller: Caller, db: Db, name: Annotated[str | None, Query(max_length=200)] = None
) -> list[dict[str, Any]]:
    """Every registered version (with its schema when ``name`` is given: that type's history). Staff only."""
    await require_staff_audited(db, caller, SCHEMAS_PATH, "system")
    async with db.acquire() as conn:
        versions = await (registry.history(conn, name) if name else registry.all_versions(conn))
        await audit.record(conn, caller, SCHEMAS_PATH, subject=None, scope="system")
    return [{**v.summary(), "schema": v.schema if name else None} for v in versions]


@router.post(
    SCHEMAS_PATH,
    status_code=201,
    response_model=SchemaVersionOut,
    responses={
        **ERROR_RESPONSES,
        400: {"model": Problem, "description": "Body is not decodable (e.g. not UTF-8)"},
        413: {"model": Problem, "description": "Body larger than the configured limit"},
    },
    tags=["staff"],
)
async def register_schema(request: Request, caller: Caller, db: Db, body: RegisterRequest) -> dict[str, Any]:
    """Register a schema version; refused (422, every reason with its JSON pointer) when it leaves the
    subset or breaks its SchemaVer level. Published to applications at once. Staff only."""
    await require_staff_audited(db, caller, SCHEMAS_PATH, "system")
    async with db.acquire() as conn:
        try:
            row = await registry.register(
                conn, body.name, body.version, body.schema_, "api:" + caller.user_hash
            )
        except SchemaRefused as exc:
            errors = [
                FieldError(loc=["body", exc.field, *pointer.split("/")[1:]], msg=reason, type="refused")
                for pointer, reason in exc.reasons
            ]
            raise ApiProblem(422, "schema_refused", str(exc), extra={"errors": errors}) from None
        await audit.record(conn, caller, SCHEMAS_PATH, subject=None, scope="system")
        payload = registry.snapshot_payload(await registry.all_versions(conn))
    prefix = registry.snapshot_prefix(request.app.state.settings.stream_prefix)
    await publish_snapshot_async(request.app.state.redis, prefix, registry.SNAPSHOT_KIND, payload)
    return {**row.summary(), "schema": row.schema}


@router.get(DAILY_PATH, response_model=list[CustomDaily], responses=READ_RESPONSES, tags=["staff"])
async def custom_daily(
    caller: Caller, db: Db, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> list[dict[str, Any]]:
    """Custom events per type and UTC day over all learners (no individual data). Staff only."""
    await require_staff_audited(db, caller, DAILY_PATH, "cohort")
    since = today() - timedelta(days=days - 1)
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT day, event_type, events FROM custom_event_daily WHERE day >= $1 ORDER BY day, event_type",
            since,
        )
        await audit.record(conn, caller, DAILY_PATH, subject=None, scope="cohort")
    return [{"day": r["day"].isoformat(), "event_type": r["event_type"], "events": r["events"]} for r in rows]
