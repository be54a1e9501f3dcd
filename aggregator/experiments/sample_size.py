"""Experiment statistics: the sample size a minimum detectable effect needs, and the progress towards it.

Part of :mod:`.statistics` (its public API); see docs/experiments.md.
"""

from __future__ import annotations

import math

from scipy import special

from .exact import Moments, Unavailable, guarded, rate_moments, suppress, variant_moments
from .inputs import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_LEARNERS,
    DEFAULT_POWER,
    MeanSums,
    MinimumEffect,
    RateSums,
    Status,
    as_real,
    check_alpha,
    check_min_learners,
)
from .outputs import SampleSize


def _required_total(
    effect: float, variances: tuple[float, float], shares: tuple[float, float], alpha: float, power: float
) -> float:
    """N with N·share_g learners per variant: (z_{1−alpha/2} + z_power)² (σc²/wc + σt²/wt) / effect²."""
    z = float(special.ndtri(1 - alpha / 2) + special.ndtri(power))
    spread = math.sqrt(variances[0] / shares[0] + variances[1] / shares[1])
    ratio = z * spread / abs(effect)
    return ratio * ratio


def _power(effect: float, standard_error: float, alpha: float) -> float:
    """Power of the two-sided normal test at this standard error (both tails)."""
    z = float(special.ndtri(1 - alpha / 2))
    shift = abs(effect) / standard_error
    return float(special.ndtr(shift - z) + special.ndtr(-shift - z))


def _shares(weights: tuple[float, float]) -> tuple[float, float]:
    checked = [as_real("weights", str(i), w) for i, w in enumerate(weights)]
    if len(checked) != 2 or any(w <= 0 for w in checked):
        raise ValueError(f"weights: two weights > 0 (control, treatment), got {weights!r}")
    total = checked[0] + checked[1]
    return checked[0] / total, checked[1] / total


def required_sample_size(
    effect: float,
    variance_control: float,
    variance_treatment: float,
    *,
    weights: tuple[float, float] = (1.0, 1.0),
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> tuple[int, int]:
    """Learners per variant (control, treatment) for a two-sided test of ``effect`` at ``alpha``, ``power``.

    Normal approximation with the per-learner variances given; at experiment sizes it matches the t-test.
    """
    check_alpha("alpha", alpha)
    check_alpha("power", power)
    shares = _shares(weights)
    if as_real("required_sample_size", "effect", effect) == 0:
        raise ValueError("effect: must be non-zero")
    variances = (
        as_real("required_sample_size", "variance_control", variance_control),
        as_real("required_sample_size", "variance_treatment", variance_treatment),
    )
    if min(variances) < 0 or max(variances) == 0:
        raise ValueError(f"variance_control, variance_treatment: must be >= 0, not both 0, got {variances!r}")
    total = _required_total(effect, (float(variances[0]), float(variances[1])), shares, alpha, power)
    if not math.isfinite(total):
        raise ValueError("effect: too small against these variances for any finite sample size")
    return max(2, math.ceil(shares[0] * total)), max(2, math.ceil(shares[1] * total))


def _progress(
    effect: float,
    control: Moments,
    treatment: Moments,
    alternative_variance: float,
    shares: tuple[float, float],
    alpha: float,
    power: float,
) -> SampleSize:
    variances = (control.variance, alternative_variance)
    if max(variances) == 0:
        raise Unavailable(Status.INSUFFICIENT_DATA, "no variation yet to plan with")
    if effect == 0:  # e.g. a relative minimum effect of a control mean that is still 0
        raise Unavailable(Status.INSUFFICIENT_DATA, "the minimum effect is 0 here: nothing to plan for")
    total = _required_total(effect, variances, shares, alpha, power)
    if not math.isfinite(total) or total > 1e15:
        raise Unavailable(Status.INSUFFICIENT_DATA, "effect too small against the variance to plan for")
    required = (max(2, math.ceil(shares[0] * total)), max(2, math.ceil(shares[1] * total)))
    now = math.sqrt(control.variance / control.n + alternative_variance / treatment.n)
    return SampleSize(
        status=Status.OK,
        reason="",
        effect=effect,
        required_control=required[0],
        required_treatment=required[1],
        current_control=control.n,
        current_treatment=treatment.n,
        progress=min(control.n / required[0], treatment.n / required[1]),
        power_now=_power(effect, now, alpha) if now > 0 else 1.0,
    )


def _absolute_effect(minimum: MinimumEffect, control_mean: float) -> float:
    if not minimum.relative:
        return minimum.value
    if control_mean == 0:
        raise Unavailable(Status.INSUFFICIENT_DATA, "a relative effect needs a non-zero control mean")
    return minimum.value * abs(control_mean)


def sample_size_means(
    control: MeanSums,
    treatment: MeanSums,
    minimum: MinimumEffect,
    *,
    weights: tuple[float, float] = (1.0, 1.0),
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> SampleSize:
    """Size needed for ``minimum`` with the variances observed so far, against the size reached."""
    check_alpha("alpha", alpha)
    check_alpha("power", power)
    check_min_learners(min_learners)
    shares = _shares(weights)

    def compute() -> SampleSize:
        suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = variant_moments(control, "control"), variant_moments(treatment, "treatment")
        effect = _absolute_effect(minimum, moments_c.mean)
        return _progress(effect, moments_c, moments_t, moments_t.variance, shares, alpha, power)

    return guarded(compute, SampleSize)


def sample_size_rates(
    control: RateSums,
    treatment: RateSums,
    minimum: MinimumEffect,
    *,
    weights: tuple[float, float] = (1.0, 1.0),
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> SampleSize:
    """Size needed for a change of ``minimum`` in the observed control rate (towards 1/2: the harder side)."""
    check_alpha("alpha", alpha)
    check_alpha("power", power)
    check_min_learners(min_learners)
    shares = _shares(weights)

    def compute() -> SampleSize:
        suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = rate_moments(control, "control"), rate_moments(treatment, "treatment")
        effect = _absolute_effect(minimum, moments_c.mean)
        candidates = [
            moments_c.mean + s * effect for s in (1.0, -1.0) if 0.0 <= moments_c.mean + s * effect <= 1.0
        ]
        if not candidates:
            raise Unavailable(
                Status.INSUFFICIENT_DATA, "the control rate plus or minus the effect leaves [0, 1]"
            )
        alternative = max(candidates, key=lambda rate: rate * (1.0 - rate))
        return _progress(
            effect, moments_c, moments_t, alternative * (1.0 - alternative), shares, alpha, power
        )

    return guarded(compute, SampleSize)
