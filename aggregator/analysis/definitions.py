"""What a staff member may ask: funnel and retention definitions, with their limits.

Pure pydantic models. An invalid definition raises ``pydantic.ValidationError`` whose ``loc``
names the field and whose message names the reason (the API turns it into a 4xx
problem+json). Semantics: docs/analytics.md.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ...instrumentation.custom_schemas import NAME_PATTERN as CUSTOM_NAME
from ...instrumentation.events import EVENT_TYPES

MIN_STEPS, MAX_STEPS = 2, 20
MAX_FILTERS = 4
MAX_FILTER_VALUES = 50
MAX_EXCLUSIONS = 5
MAX_WINDOW_S = 90 * 86_400
"""A conversion window longer than raw retention could never be seen whole."""
DEFAULT_WINDOW_S = 14 * 86_400
MAX_RANGE_DAYS = 366
MAX_PERIODS = {"day": 90, "week": 52, "month": 24}

NOT_LEARNING = frozenset({"api_request", "system_metric"})
LEARNING_EVENT_TYPES: tuple[str, ...] = tuple(sorted(set(EVENT_TYPES) - NOT_LEARNING))
"""Event types a step may name: every learning (domain) event. API requests never enter the store."""

FilterProperty = Literal["material_type", "material_id", "achievement_id", "topic_category", "xp_reason"]
FILTER_PROPERTIES: tuple[str, ...] = FilterProperty.__args__  # type: ignore[attr-defined]
BreakdownProperty = Literal[
    "material_type", "material_id", "achievement_id", "topic_category", "xp_reason", "cohort_week"
]
EventName = Annotated[
    str, Field(min_length=1, max_length=64, json_schema_extra={"enum": list(LEARNING_EVENT_TYPES)})
]
"""A learning event type (an enum in the OpenAPI document; validated by name)."""
TimeZone = Annotated[
    str, Field(min_length=1, max_length=64, description="IANA time zone name, e.g. Europe/Berlin")
]
Value = Annotated[str, Field(min_length=1, max_length=200)]


def _json_kind(label: str, *kinds: type) -> BeforeValidator:
    """Only what the OpenAPI schema says: pydantic alone would take ``0`` as a date (a Unix time),
    ``"12"`` as a number or ``1`` as true, which the schema calls invalid (schemathesis checks it)."""

    def check(value: object) -> object:
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"must be {label}")
        if date in kinds and isinstance(value, str) and not _ISO_DATE.fullmatch(value):
            raise ValueError(f"must be {label}")
        return value

    return BeforeValidator(check)


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
Int = Annotated[int, _json_kind("an integer", int)]
Number = Annotated[float, _json_kind("a number", int, float)]
Flag = Annotated[bool, _json_kind("true or false", bool)]
Time = Annotated[datetime, _json_kind("an ISO 8601 date-time with a UTC offset", str, datetime)]
Day = Annotated[date, _json_kind("a date as YYYY-MM-DD", str, date)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PropertyFilter(_Model):
    """The event's ``property`` is one of ``values``."""

    property: FilterProperty
    values: Annotated[tuple[Value, ...], Field(min_length=1, max_length=MAX_FILTER_VALUES)]


def _check_event(value: str) -> str:
    if value not in LEARNING_EVENT_TYPES and not CUSTOM_NAME.match(value):  # custom events: their schema name
        raise ValueError(f"unknown learning event type (one of: {', '.join(LEARNING_EVENT_TYPES)})")
    return value


class EventMatcher(_Model):
    event: EventName
    filters: Annotated[tuple[PropertyFilter, ...], Field(max_length=MAX_FILTERS)] = ()

    @field_validator("event")
    @classmethod
    def _known(cls, value: str) -> str:
        return _check_event(value)

    @field_validator("filters")
    @classmethod
    def _one_per_property(cls, value: tuple[PropertyFilter, ...]) -> tuple[PropertyFilter, ...]:
        names = [f.property for f in value]
        if len(set(names)) != len(names):
            raise ValueError("at most one filter per property (list several values instead)")
        return value


class FunnelStep(EventMatcher):
    optional: Flag = False
    """The step may be skipped: later steps may follow the previous matched step directly."""
    within_s: Annotated[Int, Field(ge=1, le=MAX_WINDOW_S)] | None = None
    """Per-step window: at most this long after the previous matched step."""


class Exclusion(EventMatcher):
    """A chain with this event strictly between its steps ``from_step`` and ``to_step`` does not count."""

    from_step: Annotated[Int, Field(ge=1, le=MAX_STEPS)] = 1
    to_step: Annotated[Int, Field(ge=2, le=MAX_STEPS)] = MAX_STEPS


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone name (e.g. Europe/Berlin)") from None
    return value


class _Ranged(_Model):
    start: Time
    end: Time
    timezone: TimeZone = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset (e.g. 2026-11-01T00:00:00Z)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_timezone(value)

    @model_validator(mode="after")
    def _range(self) -> _Ranged:
        if self.end <= self.start:
            raise ValueError("end: must be after start")
        if (self.end - self.start).days > MAX_RANGE_DAYS:
            raise ValueError(f"end: the range may span at most {MAX_RANGE_DAYS} days")
        return self


class FunnelDefinition(_Ranged):
    """A funnel: learners entering with step 1 in ``[start, end)``, then the later steps."""

    # The minimum is checked after the steps validate: pydantic's own `min_length` counts only the
    # valid items, so one bad step of two also reported "at least 2 items" (a second, false reason).
    steps: Annotated[
        tuple[FunnelStep, ...], Field(max_length=MAX_STEPS, json_schema_extra={"minItems": MIN_STEPS})
    ]
    order: Literal["strict", "ordered", "any"] = "ordered"
    window_s: Annotated[Int, Field(ge=1, le=MAX_WINDOW_S)] = DEFAULT_WINDOW_S
    exclusions: Annotated[tuple[Exclusion, ...], Field(max_length=MAX_EXCLUSIONS)] = ()
    breakdown: BreakdownProperty | None = None

    @field_validator("steps")
    @classmethod
    def _enough_steps(cls, value: tuple[FunnelStep, ...]) -> tuple[FunnelStep, ...]:
        if len(value) < MIN_STEPS:
            raise ValueError(f"should have at least {MIN_STEPS} items, not {len(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FunnelDefinition:
        n = len(self.steps)
        if self.steps[0].optional or self.steps[-1].optional:
            raise ValueError("steps: the first and the last step cannot be optional")
        if self.steps[0].within_s is not None:
            raise ValueError("steps.0.within_s: the first step has no previous step")
        for i, ex in enumerate(self.exclusions):
            if not ex.from_step < ex.to_step <= n:
                raise ValueError(f"exclusions.{i}: needs from_step < to_step <= {n} (the number of steps)")
        if self.order == "any":
            if any(s.optional or s.within_s is not None for s in self.steps) or self.exclusions:
                raise ValueError("order: 'any' takes no optional steps, per-step windows or exclusions")
            events = [s.event for s in self.steps]
            if len(set(events)) != n:
                raise ValueError("steps: in 'any' order every step needs its own event type")
        if self.order == "strict" and self.exclusions:
            raise ValueError("exclusions: in 'strict' order nothing lies between two steps")
        return self


class ReturnEvent(_Model):
    """What counts as coming back: any learning event, a completed material, a session of at
    least ``min_session_minutes`` (its ``session_end``), or one event type with filters."""

    kind: Literal["any_activity", "material_complete", "session", "event"] = "any_activity"
    min_session_minutes: Annotated[Number, Field(gt=0, le=24 * 60)] = 10.0
    matcher: EventMatcher | None = None

    @model_validator(mode="after")
    def _matcher(self) -> ReturnEvent:
        if (self.kind == "event") != (self.matcher is not None):
            raise ValueError("matcher: required exactly when kind is 'event'")
        return self


class RetentionDefinition(_Model):
    """Cohorts of learners by the period they started in; who comes back in later periods."""

    start: Day
    """First cohort period: the period containing this date (in ``timezone``)."""
    cohorts: Annotated[Int, Field(ge=1, le=90)] = 12
    period: Literal["day", "week", "month"] = "week"
    periods: Annotated[Int, Field(ge=1, le=90)] = 12
    """Periods after the cohort's own (cells 1..periods; cell 0 is the cohort itself)."""
    mode: Literal["first_time", "recurring"] = "first_time"
    start_event: EventMatcher | None = None
    """None: cohorts by first activity (any learning event)."""
    return_event: ReturnEvent = ReturnEvent()
    metric: Literal["study_minutes", "xp"] | None = None
    timezone: TimeZone = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_timezone(value)

    @model_validator(mode="after")
    def _limits(self) -> RetentionDefinition:
        limit = MAX_PERIODS[self.period]
        if self.periods > limit:
            raise ValueError(f"periods: at most {limit} for period '{self.period}'")
        if self.cohorts > limit:
            raise ValueError(f"cohorts: at most {limit} for period '{self.period}'")
        return self
