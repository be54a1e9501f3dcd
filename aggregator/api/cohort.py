"""Cohort route (staff): learning totals per UTC day over all learners, no individual data."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from . import audit
from .days import today, utc_midnight
from .deps import PREFIX, Caller, Db, require_staff_audited
from .etag import cached_json
from .models import CohortDay, CohortOverview
from .params import CohortParams
from .problems import READ_RESPONSES
from .queries import COHORT_SQL

COHORT_PATH = f"{PREFIX}/cohort/overview"

router = APIRouter()


@router.get(COHORT_PATH, response_model=CohortOverview, responses=READ_RESPONSES, tags=["staff"])
async def cohort_overview(
    request: Request, caller: Caller, db: Db, params: Annotated[CohortParams, Query()]
) -> Response:
    """Cohort-level learning totals per UTC day (no individual data). Staff only."""
    await require_staff_audited(db, caller, COHORT_PATH, "cohort")
    until = today()
    since = until - timedelta(days=params.days - 1)
    async with db.acquire() as conn:
        records = await conn.fetch(COHORT_SQL, utc_midnight(since), utc_midnight(until + timedelta(days=1)))
        await audit.record(conn, caller, COHORT_PATH, subject=None, scope="cohort")
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
