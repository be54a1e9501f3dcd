"""Experiment statistics: the results (pure data), each with a status and a reason.

Part of :mod:`.statistics` (its public API); see docs/experiments.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inputs import Status


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class VariantSummary:
    """One variant's row: learners, mean (or rate) and standard deviation of the per-learner totals."""

    status: Status
    reason: str
    learners: int | None = None
    mean: float | None = None
    standard_deviation: float | None = None


@dataclass(frozen=True, slots=True)
class Cuped:
    theta: float
    """Pooled within-variant slope of the metric on the covariate (the ANCOVA coefficient)."""
    variance_reduction: float
    """Share of the effect estimate's variance removed: 1 - var(adjusted) / var(unadjusted)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment against control on one metric. Lifts are fractions: 0.05 is +5 %."""

    status: Status
    reason: str
    method: str
    control_mean: float | None = None
    treatment_mean: float | None = None
    effect: float | None = None
    effect_interval: Interval | None = None
    standard_error: float | None = None
    degrees_of_freedom: float | None = None
    p_value: float | None = None
    relative_lift: float | None = None
    relative_lift_interval: Interval | None = None
    cuped: Cuped | None = None


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """Always-valid inference at one look: p-value and confidence sequence, valid however often one looks."""

    status: Status
    reason: str
    effect: float | None = None
    p_value: float | None = None
    interval: Interval | None = None
    mixing_variance: float | None = None


@dataclass(frozen=True, slots=True)
class SampleRatioCheck:
    status: Status
    reason: str
    mismatch: bool | None
    """True: the split differs from the weights beyond chance; every result of the experiment is suspect."""
    expected_shares: tuple[float, ...]
    p_value: float | None = None
    statistic: float | None = None
    observed_shares: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class SampleSize:
    """Learners needed per variant to detect ``effect`` (fixed horizon), against those exposed so far."""

    status: Status
    reason: str
    effect: float | None = None
    required_control: int | None = None
    required_treatment: int | None = None
    current_control: int | None = None
    current_treatment: int | None = None
    progress: float | None = None
    """Smaller of current/required over the two variants: 1.0 means the planned size is reached."""
    power_now: float | None = None
