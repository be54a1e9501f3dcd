"""Experiment statistics: always-valid inference (normal-mixture SPRT p-value and confidence sequence).

Part of :mod:`.statistics` (its public API); see docs/experiments.md.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import replace

from .comparisons import cuped_moments
from .exact import Moments, Unavailable, guarded, rate_moments, suppress, variant_moments
from .inputs import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_LEARNERS,
    DEFAULT_MIXING_SD,
    MeanSums,
    RateSums,
    Status,
    check_alpha,
    check_min_learners,
)
from .outputs import Interval, SequentialResult


def mixture(effect: float, variance: float, mixing_variance: float, alpha: float) -> SequentialResult:
    """Normal-mixture SPRT for effect ~ N(theta, variance), mixing theta ~ N(0, tau²) under the alternative.

    Likelihood ratio L = sqrt(V/(V+tau²)) · exp(tau²·effect² / (2V(V+tau²))); always-valid p = min(1, 1/L);
    the confidence sequence is the set of theta where the shifted L stays below 1/alpha.
    """
    ratio = mixing_variance / variance  # u = tau²/V, grows like the sample size
    if not 0.0 < ratio < math.inf:
        raise Unavailable(Status.INVALID_SUMS, "mixing variance and the effect's variance are too far apart")
    z = effect / math.sqrt(variance)
    log_lr = 0.5 * (z * z / (1.0 + 1.0 / ratio) - math.log1p(ratio))
    p_value = 1.0 if log_lr <= 0 else math.exp(-log_lr)
    half = math.sqrt(variance) * math.sqrt(
        (1.0 + 1.0 / ratio) * (2.0 * math.log(1.0 / alpha) + math.log1p(ratio))
    )
    return SequentialResult(
        Status.OK, "", effect, p_value, Interval(effect - half, effect + half), mixing_variance
    )


def _sequential(
    control: Moments, treatment: Moments, alpha: float, mixing_variance: float | None
) -> SequentialResult:
    variance = control.variance_of_mean + treatment.variance_of_mean
    if variance == 0:
        raise Unavailable(Status.INSUFFICIENT_DATA, "no variation in either variant: no interval or test")
    if mixing_variance is None:
        dof = control.n + treatment.n - 2
        pooled = ((control.n - 1) * control.variance + (treatment.n - 1) * treatment.variance) / max(dof, 1)
        mixing_variance = DEFAULT_MIXING_SD * DEFAULT_MIXING_SD * pooled
        if mixing_variance == 0:
            raise Unavailable(Status.INSUFFICIENT_DATA, "no variation to scale the mixing variance by")
    return mixture(treatment.mean - control.mean, variance, mixing_variance, alpha)


def check_mixing_variance(value: float | None) -> None:
    if value is not None and not (isinstance(value, numbers.Real) and 0 < value < math.inf):
        raise ValueError(
            f"mixing_variance: must be a finite number > 0 (metric units squared), got {value!r}"
        )


def sequential_means(
    control: MeanSums,
    treatment: MeanSums,
    *,
    alpha: float = DEFAULT_ALPHA,
    mixing_variance: float | None = None,
    cuped: bool = False,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> SequentialResult:
    """Always-valid p-value and confidence sequence for the difference of means (optionally CUPED-adjusted).

    ``mixing_variance`` (tau², metric units squared) defaults to (0.1 · pooled per-learner sd)²; set it to the
    square of the minimum detectable effect to make the sequence tightest at the planned sample size.
    """
    check_alpha("alpha", alpha)
    check_min_learners(min_learners)
    check_mixing_variance(mixing_variance)

    def compute() -> SequentialResult:
        suppress(min_learners, control=control.n, treatment=treatment.n)
        if cuped:
            moments_c, moments_t, _ = cuped_moments(control, treatment)
        else:
            moments_c, moments_t = (
                variant_moments(control, "control"),
                variant_moments(treatment, "treatment"),
            )
        return _sequential(moments_c, moments_t, alpha, mixing_variance)

    return guarded(compute, SequentialResult)


def sequential_rates(
    control: RateSums,
    treatment: RateSums,
    *,
    alpha: float = DEFAULT_ALPHA,
    mixing_variance: float | None = None,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> SequentialResult:
    """Always-valid p-value and confidence sequence for the difference of rates (normal approximation)."""
    check_alpha("alpha", alpha)
    check_min_learners(min_learners)
    check_mixing_variance(mixing_variance)

    def compute() -> SequentialResult:
        suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = rate_moments(control, "control"), rate_moments(treatment, "treatment")
        return _sequential(moments_c, moments_t, alpha, mixing_variance)

    return guarded(compute, SequentialResult)


def watch(looks: Iterable[SequentialResult]) -> SequentialResult:
    """Combine the looks so far (oldest first): the running minimum p-value and the running intersection.

    Both stay valid because the sequence covers the effect at every look at once with probability 1 − alpha.
    Looks without a result (suppressed, too early) are skipped.
    """
    latest: SequentialResult | None = None
    p_value, low, high = 1.0, -math.inf, math.inf
    for look in looks:
        if look.status is not Status.OK or look.p_value is None or look.interval is None:
            continue
        latest = look
        p_value = min(p_value, look.p_value)
        low, high = max(low, look.interval.low), min(high, look.interval.high)
    if latest is None:
        return SequentialResult(Status.INSUFFICIENT_DATA, "no look has a result yet")
    if low > high:  # an empty intersection only happens when the model's assumptions failed; show the latest
        return replace(
            latest, p_value=p_value, reason="the looks' intervals do not overlap: showing the latest"
        )
    return replace(latest, p_value=p_value, interval=Interval(low, high))
