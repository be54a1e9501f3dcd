"""Learning routes: a learner's overview (totals and daily series) and study heatmap."""

from __future__ import annotations

import zoneinfo
from datetime import date, datetime, timedelta
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from . import audit
from .days import MAX_HEATMAP_DAYS, current_streak, heatmap_range, intensity_level, python_time_zones
from .deps import PREFIX, Caller, Db, audited_subject
from .etag import cached_json
from .models import DailyActivity, Heatmap, HeatmapDay, LearningOverview
from .params import HeatmapParams, OverviewParams
from .problems import READ_RESPONSES, bad_request
from .queries import HEATMAP_SQL, learner_window

OVERVIEW_PATH = f"{PREFIX}/learning/overview"
HEATMAP_PATH = f"{PREFIX}/learning/heatmap"

router = APIRouter()


@router.get(OVERVIEW_PATH, response_model=LearningOverview, responses=READ_RESPONSES, tags=["learning"])
async def learning_overview(
    request: Request, caller: Caller, db: Db, params: Annotated[OverviewParams, Query()]
) -> Response:
    """Sessions, study minutes, materials viewed/completed, XP, current streak, daily series."""
    window = await learner_window(db, caller, OVERVIEW_PATH, params)
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
        current_streak=current_streak(stats["current_streak"], stats["streak_as_of"], until) if stats else 0,
        daily=daily,
    )
    return cached_json(request, overview, max_age=60)


def _heatmap_days(request: Request, params: HeatmapParams) -> tuple[date, date]:
    """The heatmap's first and last day; ``422`` for an unknown zone or an inconsistent range."""
    if params.tz not in (getattr(request.app.state, "time_zones", None) or python_time_zones()):
        raise bad_request("unknown_time_zone", "tz must be an IANA time zone name", ["query", "tz"])
    today = datetime.now(zoneinfo.ZoneInfo(params.tz)).date()
    start, end = heatmap_range(params.start, params.end, today)
    if start > end:
        raise bad_request("invalid_range", "start must not be after end", ["query", "start"])
    if (end - start).days + 1 > MAX_HEATMAP_DAYS:
        raise bad_request(
            "range_too_long", f"the range may span at most {MAX_HEATMAP_DAYS} days", ["query", "start"]
        )
    return start, end


def _heatmap_day(day: date, r: asyncpg.Record | None) -> HeatmapDay:
    minutes = round(r["study_seconds"] / 60, 3) if r else 0.0
    return HeatmapDay(
        day=day,
        minutes=minutes,
        sessions=r["sessions"] if r else 0,
        events=r["events"] if r else 0,
        level=intensity_level(minutes),
    )


@router.get(HEATMAP_PATH, response_model=Heatmap, responses=READ_RESPONSES, tags=["learning"])
async def learning_heatmap(
    request: Request, caller: Caller, db: Db, params: Annotated[HeatmapParams, Query()]
) -> Response:
    """Study minutes and an intensity level per calendar day in the caller's time zone."""
    start, end = _heatmap_days(request, params)
    hashes = await audited_subject(db, caller, HEATMAP_PATH, params.subject)
    async with db.acquire() as conn:
        try:
            records = await conn.fetch(HEATMAP_SQL, list(hashes), params.tz, start, end)
        except asyncpg.InvalidParameterValueError:  # a zone Python knows and PostgreSQL does not
            raise bad_request(
                "unknown_time_zone", "this time zone is not supported by the database", ["query", "tz"]
            ) from None
        await audit.record(conn, caller, HEATMAP_PATH, subject=hashes[0])
    by_day = {r["day"]: r for r in records}
    days = [
        _heatmap_day(start + timedelta(days=offset), by_day.get(start + timedelta(days=offset)))
        for offset in range((end - start).days + 1)
    ]
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
