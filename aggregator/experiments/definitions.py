"""Experiment definitions (pure): the metric catalogue and the validated definition of one version.

A definition names the experiment (a slug key), its variants with integer weights (the first variant is
the control), when it starts and ends, a primary metric and guardrail metrics from :data:`METRICS`, and
the minimum effect the sample size is planned for. Invalid input raises pydantic's ``ValidationError``,
whose ``loc`` names the field (the API answers 422 problem+json naming it, the CLI prints it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from ...instrumentation.experiments import ExperimentSpec

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


@dataclass(frozen=True, slots=True)
class Metric:
    """One catalogue metric: a per-learner total from events after the learner's first exposure."""

    name: str
    kind: Literal["mean", "rate"]
    """``mean``: the mean per-learner total; ``rate``: the share of learners whose total is > 0."""
    label: str
    unit: str
    scale: int = 1
    """Totals are stored in a finer unit (study seconds for minutes): the mean is divided by this."""
    raters_only: bool = False
    """Counted over learners with at least one input event (a mean rating), not all exposed learners."""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("completion_rate", "rate", "learners completing a material", "share"),
        Metric("study_minutes", "mean", "study minutes per learner", "min", scale=60),
        Metric("sessions", "mean", "sessions per learner", "sessions"),
        Metric("xp", "mean", "XP per learner", "XP"),
        Metric(
            "ai_coach_rating", "mean", "mean AI-coach rating (learners who rated)", "1-5", raters_only=True
        ),
        Metric("day7_return", "rate", "learners active on day 7 after exposure", "share"),
    )
}
"""The catalogue (issue 19); plus, per registered custom event type T, ``custom:T`` (:func:`metric_of`)."""

CUSTOM_METRIC_PREFIX = "custom:"
CatalogueMetric = Literal[
    "completion_rate", "study_minutes", "sessions", "xp", "ai_coach_rating", "day7_return"
]
CustomMetric = Annotated[
    str,
    StringConstraints(
        # custom_schemas.NAME_PATTERN after the prefix (a test keeps them equal)
        pattern=r"^custom:[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+/[a-z][a-z0-9_]{0,63}$",
        max_length=200,
    ),
]
"""``custom:`` + a custom event type (``custom:org.example/case_completed``): its events per learner."""


def _one_reason(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """One error for an unknown metric, not one per member of the union (named by pydantic's labels)."""
    try:
        return handler(value)
    except ValidationError:
        known = ", ".join(METRICS)
        raise ValueError(
            f"unknown metric (one of {known}, or {CUSTOM_METRIC_PREFIX}<registered custom event type>)"
        ) from None


MetricName = Annotated[CatalogueMetric | CustomMetric, WrapValidator(_one_reason)]


def custom_event_type(metric: str) -> str | None:
    """The custom event type a ``custom:`` metric counts (``None``: a catalogue metric)."""
    return metric[len(CUSTOM_METRIC_PREFIX) :] if metric.startswith(CUSTOM_METRIC_PREFIX) else None


def metric_of(name: str) -> Metric:
    """The catalogue's metric, or the count of a custom event type (a mean per learner, with CUPED)."""
    event_type = custom_event_type(name)
    if event_type is None:
        return METRICS[name]
    return Metric(name, "mean", f"{event_type} events per learner", "events")


Weight = Annotated[int, Field(ge=1, le=10_000)]


class ExperimentDefinition(BaseModel):
    """One version of an experiment, as staff define it.

    ``variants`` maps each variant's name to its whole-number weight, the control first (a JSON object: the
    names are distinct by construction). The experiment runs ``duration_days`` from ``starts_at`` (open-ended
    when unset). Guardrail metrics that repeat or name the primary metric are dropped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Slug
    variants: Annotated[
        dict[Slug, Weight],
        # Names other than slugs are refused: said in the schema (patternProperties alone would allow them).
        Field(min_length=2, max_length=10, json_schema_extra={"additionalProperties": False}),
    ]
    starts_at: AwareDatetime
    duration_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    primary_metric: MetricName
    guardrail_metrics: Annotated[list[MetricName], Field(max_length=5)] = []
    minimum_effect: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.05
    """Relative minimum effect the sample size is planned for (0.05: +5 % over control)."""

    # What the OpenAPI schema says is what is accepted: no number as a time, no string as a number.
    @field_validator("starts_at", mode="before")
    @classmethod
    def _time_as_text(cls, value: object) -> object:
        if not isinstance(value, str | datetime):
            raise ValueError("must be an ISO 8601 date-time with a time zone")
        return value

    @field_validator("duration_days", "minimum_effect", mode="before")
    @classmethod
    def _number_as_number(cls, value: object) -> object:
        if isinstance(value, str | bool):
            raise ValueError("must be a number")
        return value

    @field_validator("variants", mode="before")
    @classmethod
    def _weights_as_numbers(cls, value: object) -> object:
        if isinstance(value, dict) and any(isinstance(w, str | bool) for w in value.values()):
            raise ValueError("weights must be whole numbers")
        return value

    @field_validator("guardrail_metrics")
    @classmethod
    def _distinct_metrics(cls, value: list[str], info: ValidationInfo) -> list[str]:
        primary = info.data.get("primary_metric")
        return [m for i, m in enumerate(value) if m != primary and m not in value[:i]]

    @property
    def ends_at(self) -> datetime | None:
        return None if self.duration_days is None else self.starts_at + timedelta(days=self.duration_days)

    @property
    def names(self) -> list[str]:
        return list(self.variants)

    @property
    def metrics(self) -> list[str]:
        return [self.primary_metric, *self.guardrail_metrics]

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(self.variants.values())

    def spec(self, version: int) -> ExperimentSpec:
        """What apps need to assign learners to this version."""
        return ExperimentSpec(
            self.key,
            version,
            tuple(self.variants),
            self.weights,
            self.starts_at.timestamp(),
            self.ends_at.timestamp() if self.ends_at is not None else None,
        )

    def is_live(self, now: datetime) -> bool:
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)
