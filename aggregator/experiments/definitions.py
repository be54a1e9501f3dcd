"""Experiment definitions (pure): the metric catalogue and the validated definition of one version.

A definition names the experiment (a slug key), its variants with integer weights (the first variant is
the control), when it starts and ends, a primary metric and guardrail metrics from :data:`METRICS`, and
the minimum effect the sample size is planned for. Invalid input raises pydantic's ``ValidationError``,
whose ``loc`` names the field (the API answers 422 problem+json naming it, the CLI prints it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
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
"""The catalogue (issue 19). Custom event counts join it once custom events exist."""

MetricName = Literal["completion_rate", "study_minutes", "sessions", "xp", "ai_coach_rating", "day7_return"]


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Slug
    weight: Annotated[int, Field(ge=1, le=10_000)]


class ExperimentDefinition(BaseModel):
    """One version of an experiment, as staff define it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Slug
    variants: Annotated[list[Variant], Field(min_length=2, max_length=10)]
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None
    primary_metric: MetricName
    guardrail_metrics: Annotated[list[MetricName], Field(max_length=5)] = []
    minimum_effect: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.05
    """Relative minimum effect the sample size is planned for (0.05: +5 % over control)."""

    @field_validator("variants")
    @classmethod
    def _distinct_variants(cls, value: list[Variant]) -> list[Variant]:
        if len({v.name for v in value}) != len(value):
            raise ValueError("variant names must be distinct")
        return value

    @field_validator("ends_at")
    @classmethod
    def _after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        starts_at = info.data.get("starts_at")
        if value is not None and starts_at is not None and value <= starts_at:
            raise ValueError("must be after starts_at")
        return value

    @field_validator("guardrail_metrics")
    @classmethod
    def _distinct_metrics(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("primary_metric") in value or len(set(value)) != len(value):
            raise ValueError("must be distinct and differ from primary_metric")
        return value

    @property
    def metrics(self) -> list[str]:
        return [self.primary_metric, *self.guardrail_metrics]

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(v.weight for v in self.variants)

    def spec(self, version: int) -> ExperimentSpec:
        """What apps need to assign learners to this version."""
        return ExperimentSpec(
            self.key,
            version,
            tuple(v.name for v in self.variants),
            self.weights,
            self.starts_at.timestamp(),
            self.ends_at.timestamp() if self.ends_at is not None else None,
        )

    def is_live(self, now: datetime) -> bool:
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)
