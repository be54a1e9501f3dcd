"""StudyIn domain events: versioned pydantic models, independent of how they travel.

A model validates what app code reports (types, limits, enumerations) and knows how to
flatten itself into ``studyin.*`` attributes (:meth:`DomainEvent.attributes`); the carrier
(:mod:`.tracker`) decides whether that becomes a span event, a span, or later a log record.
No model has a free-text field: identifiers are slugs or UUIDs, so no message text, e-mail
or name can ride along.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from . import semconv

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
"""A short machine identifier (material id, achievement id, model name...): no free text."""

Count = Annotated[int, Field(ge=0, le=10_000_000)]


class MaterialType(StrEnum):
    PDF = "pdf"
    VIDEO = "video"
    QUESTION_BANK = "question_bank"
    FLASHCARDS = "flashcards"
    ARTICLE = "article"
    AUDIO = "audio"
    CASE_STUDY = "case_study"
    OTHER = "other"


class SessionEndReason(StrEnum):
    COMPLETED = "completed"
    ABANDONED = "abandoned"
    TIMEOUT = "timeout"


class DomainEvent(BaseModel):
    """Base of every event. Subclasses set ``event_type`` and ``version``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)

    event_type: ClassVar[str]
    version: ClassVar[int] = 1
    _attribute_names: ClassVar[tuple[tuple[str, str], ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Resolve attribute names once per class, not per event (hot path).
        missing = [name for name in cls.model_fields if name not in semconv.FIELD_ATTRIBUTES]
        if missing:
            raise TypeError(f"{cls.__name__}: fields {missing} have no attribute in semconv")
        cls._attribute_names = tuple((name, semconv.FIELD_ATTRIBUTES[name]) for name in cls.model_fields)
        if getattr(cls, "event_type", None):
            EVENT_TYPES[cls.event_type] = cls

    def attributes(self) -> dict[str, Any]:
        """The event as OpenTelemetry attributes (``None`` fields are left out)."""
        values = self.__dict__
        out: dict[str, Any] = {semconv.EVENT_VERSION: self.version}
        for name, attribute in self._attribute_names:
            value = values[name]
            if value is None:
                continue
            if isinstance(value, StrEnum):
                value = value.value
            elif isinstance(value, UUID):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[attribute] = value
        return out


EVENT_TYPES: Final[dict[str, type[DomainEvent]]] = {}
"""Registry: event type name -> model class."""


# --- learning sessions ---------------------------------------------------------------------


class SessionStart(DomainEvent):
    event_type: ClassVar[str] = "session_start"
    session_id: UUID
    material_id: Slug | None = None


class SessionEnd(DomainEvent):
    event_type: ClassVar[str] = "session_end"
    session_id: UUID
    duration_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600)]
    xp_earned: Count = 0
    materials_touched: Annotated[tuple[Slug, ...], Field(max_length=200)] = ()
    end_reason: SessionEndReason = SessionEndReason.COMPLETED


# --- materials -----------------------------------------------------------------------------


class MaterialView(DomainEvent):
    event_type: ClassVar[str] = "material_view"
    material_id: Slug
    material_type: MaterialType
    session_id: UUID | None = None


class MaterialProgress(DomainEvent):
    event_type: ClassVar[str] = "material_progress"
    material_id: Slug
    material_type: MaterialType
    progress: Annotated[float, Field(ge=0, le=1)]
    session_id: UUID | None = None


class MaterialComplete(DomainEvent):
    event_type: ClassVar[str] = "material_complete"
    material_id: Slug
    material_type: MaterialType
    time_spent_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600)] | None = None
    score: Annotated[float, Field(ge=0, le=1)] | None = None
    session_id: UUID | None = None


# --- gamification --------------------------------------------------------------------------


class XpAwarded(DomainEvent):
    event_type: ClassVar[str] = "xp_awarded"
    xp_amount: Annotated[int, Field(ge=1, le=100_000)]
    xp_reason: Slug
    session_id: UUID | None = None


class LevelUp(DomainEvent):
    event_type: ClassVar[str] = "level_up"
    level: Annotated[int, Field(ge=1, le=10_000)]
    total_xp: Annotated[int, Field(ge=0, le=1_000_000_000)]


class AchievementUnlocked(DomainEvent):
    event_type: ClassVar[str] = "achievement_unlocked"
    achievement_id: Slug


class StreakUpdated(DomainEvent):
    event_type: ClassVar[str] = "streak_updated"
    streak_days: Annotated[int, Field(ge=0, le=100_000)]


class StreakBroken(DomainEvent):
    event_type: ClassVar[str] = "streak_broken"
    previous_streak_days: Annotated[int, Field(ge=0, le=100_000)]


# --- AI coach (never the message text) -------------------------------------------------------


class AiCoachInteraction(DomainEvent):
    event_type: ClassVar[str] = "ai_coach_interaction"
    interaction_id: UUID
    latency_ms: Annotated[float, Field(ge=0, le=600_000)]
    tokens_in: Count
    tokens_out: Count
    model: Slug
    topic_category: Slug


class AiCoachFeedback(DomainEvent):
    event_type: ClassVar[str] = "ai_coach_feedback"
    interaction_id: UUID
    rating: Annotated[int, Field(ge=1, le=5)]


# --- system metrics --------------------------------------------------------------------------


class ApiRequest(DomainEvent):
    """One API request, derived from an HTTP server span (auto-instrumentation)."""

    event_type: ClassVar[str] = "api_request"
    route: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    method: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3,10}$|^_OTHER$")]
    status_code: Annotated[int, Field(ge=0, le=599)]
    duration_ms: Annotated[float, Field(ge=0)]
    error_type: Annotated[str, StringConstraints(max_length=128)] | None = None


def parse_event(event_type: str, data: dict[str, Any]) -> DomainEvent:
    """Validate ``data`` as the event named ``event_type`` (raises ``KeyError``/``ValidationError``)."""
    try:
        model = EVENT_TYPES[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}") from None
    return model.model_validate(data)
