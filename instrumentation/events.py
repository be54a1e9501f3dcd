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

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints

from . import semconv

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
"""A short machine identifier (material id, achievement id, reason...): no free text."""

ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,79}$")]
"""An AI model name such as ``gpt-4o-mini`` or ``llama3:8b``: no spaces, so no prose."""

ErrorType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")]
"""An error class or status code (``TimeoutError``, ``500``): never an error message."""

Count = Annotated[int, Strict(), Field(ge=0, le=10_000_000)]
MAX_SECONDS = 7 * 24 * 3600
"""The longest duration an event may report (a week): the aggregator refuses longer ones too."""
Seconds = Annotated[float, Strict(), Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
"""A duration in seconds, at most a week (a session left open longer is a bug, not a session)."""
Fraction = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]


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
    """Base of every event. Subclasses set ``event_type`` and ``version``.

    ``version`` is bumped when a field changes meaning or type (added optional fields do not
    need a bump); it travels as ``studyin.event.version`` so readers can tell old rows apart.
    """

    # hide_input_in_errors: a ValidationError printed anywhere (a traceback, a chained cause)
    # must not quote the rejected value.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=False, validate_default=True, hide_input_in_errors=True
    )

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
    """A learning session began (its span starts here)."""

    event_type: ClassVar[str] = "session_start"
    session_id: UUID
    material_id: Slug | None = None


class SessionEnd(DomainEvent):
    """A learning session ended: completed, abandoned (left early) or timed out (idle).

    ``duration_s`` is computed by the tracker: start to end, or start to the last activity
    for a timeout (the idle tail is not study time).
    """

    event_type: ClassVar[str] = "session_end"
    session_id: UUID
    duration_s: Seconds
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
    progress: Fraction
    session_id: UUID | None = None


class MaterialComplete(DomainEvent):
    event_type: ClassVar[str] = "material_complete"
    material_id: Slug
    material_type: MaterialType
    time_spent_s: Seconds | None = None
    score: Fraction | None = None
    session_id: UUID | None = None


# --- gamification --------------------------------------------------------------------------


class XpAwarded(DomainEvent):
    event_type: ClassVar[str] = "xp_awarded"
    xp_amount: Annotated[int, Strict(), Field(ge=1, le=100_000)]
    xp_reason: Slug
    session_id: UUID | None = None


class LevelUp(DomainEvent):
    event_type: ClassVar[str] = "level_up"
    level: Annotated[int, Strict(), Field(ge=1, le=10_000)]
    total_xp: Annotated[int, Strict(), Field(ge=0, le=1_000_000_000)]


class AchievementUnlocked(DomainEvent):
    event_type: ClassVar[str] = "achievement_unlocked"
    achievement_id: Slug


class StreakUpdated(DomainEvent):
    event_type: ClassVar[str] = "streak_updated"
    streak_days: Annotated[int, Strict(), Field(ge=1, le=100_000)]


class StreakBroken(DomainEvent):
    event_type: ClassVar[str] = "streak_broken"
    previous_streak_days: Annotated[int, Strict(), Field(ge=1, le=100_000)]


# --- AI coach (never the message text) -------------------------------------------------------


class AiCoachInteraction(DomainEvent):
    """One question to the AI coach and its answer: measured, never recorded.

    There is deliberately no field that could hold the prompt or the answer.
    """

    event_type: ClassVar[str] = "ai_coach_interaction"
    interaction_id: UUID
    latency_ms: Annotated[float, Strict(), Field(ge=0, le=600_000, allow_inf_nan=False)]
    tokens_in: Count
    tokens_out: Count
    model: ModelName
    topic_category: Slug
    session_id: UUID | None = None


class AiCoachFeedback(DomainEvent):
    event_type: ClassVar[str] = "ai_coach_feedback"
    interaction_id: UUID
    rating: Annotated[int, Strict(), Field(ge=1, le=5)]


# --- experiments ---------------------------------------------------------------------------


class ExperimentExposure(DomainEvent):
    """A learner saw a variant of an experiment (``tracker.variant``); the first one counts."""

    event_type: ClassVar[str] = "experiment_exposure"
    experiment_key: Slug
    experiment_version: Annotated[int, Strict(), Field(ge=1, le=1_000_000)]
    variant: Slug


# --- system metrics --------------------------------------------------------------------------


class ApiRequest(DomainEvent):
    """One API request. Normally derived from an HTTP server span (auto-instrumentation);
    the tracker's ``api_request`` is for servers the ASGI instrumentation does not cover."""

    event_type: ClassVar[str] = "api_request"
    route: Annotated[str, StringConstraints(pattern=r"^/[^\s?#@]{0,255}$")]
    method: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3,10}$|^_OTHER$")]
    status_code: Annotated[int, Strict(), Field(ge=0, le=599)]  # 0: no response was sent
    duration_ms: Annotated[float, Strict(), Field(ge=0, le=3_600_000, allow_inf_nan=False)]
    error_type: ErrorType | None = None


class SystemMetric(DomainEvent):
    """A measured system value (queue depth, cache hit ratio, job duration...), user optional."""

    event_type: ClassVar[str] = "system_metric"
    metric_name: Slug
    metric_value: Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-1e15, le=1e15)]
    metric_unit: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_{}/%.-]{1,16}$")] = "1"


def parse_event(event_type: str, data: dict[str, Any]) -> DomainEvent:
    """Validate ``data`` as the event named ``event_type`` (raises ``KeyError``/``ValidationError``)."""
    try:
        model = EVENT_TYPES[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}") from None
    return model.model_validate(data)


# --- the catalogue (docs/instrumentation.md is generated from this) ----------------------------

_PATTERN_NAMES = {
    r"^[a-z0-9][a-z0-9_.-]{0,63}$": "slug",
}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e12 else f"{value:g}"


def _describe(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return " \\| ".join(f"`{v}`" for v in target["enum"])
    if "anyOf" in schema:
        parts = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return _describe(parts[0], defs) + " (optional)"
    kind = schema.get("type", "any")
    if schema.get("format") == "uuid":
        return "UUID"
    if kind == "array":
        return f"list of {_describe(schema['items'], defs)}, ≤ {schema.get('maxItems', '∞')} items"
    if kind == "string":
        pattern = schema.get("pattern")
        if pattern in _PATTERN_NAMES:
            return _PATTERN_NAMES[pattern]
        return f"text matching `{pattern}`".replace("|", "\\|") if pattern else "text"
    low, high = schema.get("minimum"), schema.get("maximum")
    bounds = f" {_num(low)}…{_num(high)}" if low is not None and high is not None else ""
    if low is not None and high is None:
        bounds = f" ≥ {_num(low)}"
    return f"{'int' if kind == 'integer' else 'number'}{bounds}"


def catalogue_markdown() -> str:
    """The event catalogue as Markdown: one table per event type (fields, attributes, limits)."""
    lines: list[str] = [
        "A slug is `^[a-z0-9][a-z0-9_.-]{0,63}$` (lower-case id, no spaces). Every event also carries",
        f"`{semconv.EVENT_VERSION}` and, when it concerns a user, `{semconv.USER_HASH}`.",
        "",
    ]
    for event_type, model in EVENT_TYPES.items():
        schema = model.model_json_schema()
        defs = schema.get("$defs", {})
        required = set(schema.get("required", ()))
        doc = " ".join((model.__doc__ or "").split("\n\n")[0].split())
        lines += [f"### `{semconv.event_name(event_type)}` (v{model.version})", ""]
        if doc and not doc.startswith("Base of every event"):
            lines += [doc, ""]
        lines += ["| field | attribute | type and limits | required |", "|---|---|---|---|"]
        for name, prop in schema["properties"].items():
            attribute = semconv.FIELD_ATTRIBUTES[name]
            needed = "yes" if name in required else f"no (default `{prop.get('default')}`)"
            lines.append(f"| `{name}` | `{attribute}` | {_describe(prop, defs)} | {needed} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
