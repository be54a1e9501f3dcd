"""Gamification route: a learner's XP trend, level, achievements and streaks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .days import current_streak
from .deps import PREFIX, Caller, Db
from .etag import cached_json
from .models import GamificationProgress, Streaks, XpPoint
from .params import OverviewParams
from .problems import READ_RESPONSES
from .queries import learner_window

GAMIFICATION_PATH = f"{PREFIX}/gamification/progress"

router = APIRouter()


@router.get(
    GAMIFICATION_PATH,
    response_model=GamificationProgress,
    responses=READ_RESPONSES,
    tags=["gamification"],
)
async def gamification_progress(
    request: Request, caller: Caller, db: Db, params: Annotated[OverviewParams, Query()]
) -> Response:
    """XP trend over the window, level, achievements, current and longest streak."""
    window = await learner_window(db, caller, GAMIFICATION_PATH, params)
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
