"""Request and response models of the query API (published in its OpenAPI document).

Every model forbids unknown fields, so a request with a misspelt field is rejected with the
field path instead of being silently ignored.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TRACK_BATCH = 500
"""Most events in one ``POST /api/analytics/events/track`` request."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors (RFC 9457 problem details) ------------------------------------------------------


class FieldError(_Model):
    loc: list[str | int] = Field(description="Path of the offending field, e.g. ['query', 'days']")
    msg: str
    type: str


class Problem(_Model):
    """``application/problem+json`` body of every error response."""

    type: str = Field(default="about:blank", description="URI reference of the problem type")
    title: str = Field(description="Short summary of the HTTP status")
    status: int = Field(ge=100, le=599)
    detail: str = Field(description="What went wrong, for humans")
    code: str = Field(description="Machine-readable reason, e.g. token_expired, staff_role_required")
    instance: str | None = Field(default=None, description="Path of the request")
    errors: list[FieldError] | None = Field(default=None, description="Per-field errors (422 only)")


# --- learning ------------------------------------------------------------------------------------


class DailyActivity(_Model):
    day: date
    sessions: int
    study_minutes: float
    materials_viewed: int
    materials_completed: int
    xp: int


class LearningOverview(_Model):
    subject: str = Field(description="Pseudonym whose data this is (cohort: 'cohort')")
    days: int = Field(description="Window length in days, ending today (UTC)")
    since: date
    until: date
    sessions: int
    study_minutes: float
    materials_viewed: int
    materials_completed: int
    xp: int
    current_streak: int = Field(
        description="Streak in days as last reported by the app; 0 if not extended yesterday or today (UTC)"
    )
    daily: list[DailyActivity] = Field(description="Days with activity, oldest first")


class HeatmapDay(_Model):
    day: date = Field(description="Calendar day in the requested time zone")
    minutes: float = Field(description="Study minutes that day")
    sessions: int
    events: int
    level: int = Field(ge=0, le=4, description="Intensity 0..4 (0: none, <15, <30, <60, >=60 minutes)")


class Heatmap(_Model):
    subject: str
    tz: str = Field(description="IANA time zone the days are in")
    start: date
    end: date
    total_minutes: float
    active_days: int
    days: list[HeatmapDay] = Field(description="Every day of the range, oldest first")


# --- gamification --------------------------------------------------------------------------------


class XpPoint(_Model):
    day: date
    xp: int = Field(description="XP earned that day")
    cumulative_xp: int = Field(description="XP earned in the window up to and including that day")


class Streaks(_Model):
    current: int = Field(description="As in the overview: 0 once the streak was not extended for a day")
    longest: int
    as_of: datetime | None = Field(description="When the app last reported the streak")


class GamificationProgress(_Model):
    subject: str
    days: int
    xp_total: int = Field(description="All-time XP")
    xp_in_window: int
    level: int
    achievements: list[str] = Field(description="Unlocked achievement ids, sorted")
    streaks: Streaks
    last_activity_at: datetime | None
    xp_trend: list[XpPoint] = Field(description="Days with XP in the window, oldest first")


# --- system metrics ------------------------------------------------------------------------------


class MetricsWindow(StrEnum):
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    H6 = "6h"
    H24 = "24h"


WINDOW_MINUTES: dict[MetricsWindow, int] = {
    MetricsWindow.M5: 5,
    MetricsWindow.M15: 15,
    MetricsWindow.H1: 60,
    MetricsWindow.H6: 360,
    MetricsWindow.H24: 1440,
}


class RouteMetrics(_Model):
    route: str = Field(description="Templated route, e.g. /materials/{material_id}")
    method: str
    requests: int
    errors: int = Field(description="Requests that ended in a server error or exception")
    client_errors: int = Field(description="Requests answered 4xx")
    error_rate: float = Field(description="errors / requests")
    errors_by_type: dict[str, int] = Field(description="error.type -> count")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class PipelineLag(_Model):
    entries_behind: int = Field(description="Bus entries not yet acknowledged by the aggregator group")
    pending: int = Field(description="Entries delivered but not acknowledged")
    oldest_unprocessed_age_s: float | None = Field(description="Age of the oldest unacknowledged entry")


class SystemMetrics(_Model):
    window: MetricsWindow
    since: datetime
    until: datetime
    routes: list[RouteMetrics] = Field(description="Busiest first")
    active_users: int = Field(description="Distinct learners with any event in the window (hour grain)")
    pipeline: PipelineLag


# --- cohort ---------------------------------------------------------------------------------------


class CohortDay(_Model):
    day: date
    learners: int | None = Field(
        description="Distinct learners active that day; null when 1 to k-1 (the day is then suppressed)"
    )
    suppressed: bool = Field(description="The day counted 1 to k-1 learners: every figure of it is null")
    peak_hourly_active_users: int | None = Field(
        description="Largest count of distinct learners active in one hour (null when 1 to k-1)"
    )
    sessions: int | None
    study_minutes: float | None
    materials_viewed: int | None
    materials_completed: int | None
    xp: int | None
    ai_interactions: int | None


class CohortOverview(_Model):
    days: int
    since: date
    until: date
    min_group_size: int = Field(description="k: a day counting 1 to k-1 learners is suppressed")
    suppressed_days: int = Field(description="Days suppressed; the totals below leave them out")
    sessions: int
    study_minutes: float
    materials_viewed: int
    materials_completed: int
    xp: int
    ai_interactions: int
    daily: list[CohortDay]


# --- event tracking -------------------------------------------------------------------------------


class TrackedEvent(_Model):
    type: str = Field(
        description="Event type, e.g. material_view (see the domain event models)",
        min_length=1,
        max_length=64,
        examples=["material_view"],
    )
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="The event's fields as in its model (unknown fields are rejected); no user id",
        examples=[{"material_id": "cardio-101", "material_type": "video"}],
    )


class TrackRequest(_Model):
    events: Annotated[list[TrackedEvent], Field(min_length=1, max_length=MAX_TRACK_BATCH)]


class TrackItemResult(_Model):
    index: int
    type: str
    status: Literal["accepted", "rejected"]
    errors: list[FieldError] = Field(default_factory=list)


class TrackResponse(_Model):
    accepted: int
    rejected: int
    results: list[TrackItemResult] = Field(description="One per submitted event, in order")


# --- health ----------------------------------------------------------------------------------------


class Health(_Model):
    status: Literal["ok"]


class Readiness(_Model):
    ready: bool
    checks: dict[str, str] = Field(description="postgres/redis -> 'ok' or the failure's type")
