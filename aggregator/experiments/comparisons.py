"""Experiment statistics: treatment against control (Welch, CUPED, Newcombe, pooled z), per-variant summaries.

Part of :mod:`.statistics` (its public API); see docs/experiments.md.
"""

from __future__ import annotations

import math
from fractions import Fraction

from scipy import special

from .exact import (
    Moments,
    Unavailable,
    as_float,
    comoment,
    guarded,
    non_negative,
    rate_moments,
    suppress,
    variant_moments,
)
from .inputs import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_LEARNERS,
    TOLERANCE,
    MeanSums,
    RateSums,
    Status,
    check_alpha,
    check_min_learners,
)
from .outputs import Comparison, Cuped, Interval, VariantSummary


def _welch_df(control: Moments, treatment: Moments) -> float:
    """Welch–Satterthwaite degrees of freedom, written in variance shares so nothing over- or underflows."""
    a, b = control.variance_of_mean, treatment.variance_of_mean
    share_a, share_b = a / (a + b), b / (a + b)
    return 1.0 / (share_a * share_a / (control.n - 1) + share_b * share_b / (treatment.n - 1))


def _lift(control: Moments, treatment: Moments, alpha: float) -> tuple[float | None, Interval | None]:
    """Relative lift (treatment/control − 1) and its delta-method interval.

    Fieller's interval for a ratio is bounded only when the control mean is significantly non-zero at the same
    level; when it is not, no finite interval is honest and none is given.
    """
    if control.mean == 0:
        return None, None
    lift = (treatment.mean - control.mean) / control.mean
    z = float(special.ndtri(1 - alpha / 2))
    if abs(control.mean) <= z * math.sqrt(control.variance_of_mean):
        return lift, None
    ratio = treatment.mean / control.mean
    spread = math.sqrt(treatment.variance_of_mean + ratio * ratio * control.variance_of_mean)
    half = z * spread / abs(control.mean)
    return lift, Interval(lift - half, lift + half)


def _welch(
    control: Moments, treatment: Moments, alpha: float, method: str, cuped: Cuped | None
) -> Comparison:
    variance = control.variance_of_mean + treatment.variance_of_mean
    if variance == 0:
        raise Unavailable(Status.INSUFFICIENT_DATA, "no variation in either variant: no interval or test")
    standard_error = math.sqrt(variance)
    df = _welch_df(control, treatment)
    effect = treatment.mean - control.mean
    half = float(special.stdtrit(df, 1 - alpha / 2)) * standard_error
    # One df for the interval and the test, so the interval excludes 0 exactly when p < alpha. (scipy's
    # ttest_ind_from_stats recomputes df from squared variances, which underflow at extreme scales.)
    p_value = float(2.0 * special.stdtr(df, -abs(effect) / standard_error))
    lift, lift_interval = _lift(control, treatment, alpha)
    return Comparison(
        status=Status.OK,
        reason="",
        method=method,
        control_mean=control.mean,
        treatment_mean=treatment.mean,
        effect=effect,
        effect_interval=Interval(effect - half, effect + half),
        standard_error=standard_error,
        degrees_of_freedom=df,
        p_value=p_value,
        relative_lift=lift,
        relative_lift_interval=lift_interval,
        cuped=cuped,
    )


def compare_means(
    control: MeanSums,
    treatment: MeanSums,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> Comparison:
    """Welch's t-test and (1 − alpha) interval for the difference of mean per-learner totals, and the lift."""
    check_alpha("alpha", alpha)
    check_min_learners(min_learners)
    method = "welch"

    def compute() -> Comparison:
        suppress(min_learners, control=control.n, treatment=treatment.n)
        return _welch(
            variant_moments(control, "control"), variant_moments(treatment, "treatment"), alpha, method, None
        )

    return guarded(compute, lambda status, reason: Comparison(status, reason, method))


def _centred_sums(sums: MeanSums, label: str) -> tuple[Fraction, Fraction, Fraction]:
    """n times the centred Σ(y−ȳ)², Σ(x−x̄)², Σ(y−ȳ)(x−x̄), exactly, checked for consistency."""
    assert sums.covariate is not None
    x = sums.covariate
    yy = non_negative(
        comoment(sums.n, sums.sum, sums.sum, sums.sum_squares), sums.n * Fraction(sums.sum_squares), label
    )
    xx = non_negative(comoment(sums.n, x.sum, x.sum, x.sum_squares), sums.n * Fraction(x.sum_squares), label)
    xy = comoment(sums.n, sums.sum, x.sum, x.cross_sum)
    # Cauchy–Schwarz: xy² <= xx·yy for any data; float sums may miss by rounding of the raw magnitudes.
    slack = (TOLERANCE * sums.n) ** 2 * Fraction(sums.sum_squares) * Fraction(x.sum_squares)
    if xy * xy > xx * yy + slack:
        raise Unavailable(Status.INVALID_SUMS, f"{label} covariate sums: no set of learners has these sums")
    return yy, xx, xy


def cuped_moments(control: MeanSums, treatment: MeanSums) -> tuple[Moments, Moments, float]:
    """Moments of y − theta·(x − x̄) per variant, theta = pooled within-variant slope (exact fractions)."""
    if control.covariate is None or treatment.covariate is None:
        raise Unavailable(Status.INSUFFICIENT_DATA, "no pre-exposure covariate sums for CUPED")
    variants = {"control": control, "treatment": treatment}
    for label, sums in variants.items():
        if sums.n < 2:
            raise Unavailable(Status.INSUFFICIENT_DATA, f"{label} needs at least 2 learners for a variance")
    centred = {label: _centred_sums(sums, label) for label, sums in variants.items()}
    sxx = sum((centred[label][1] / variants[label].n for label in variants), Fraction(0))
    sxy = sum((centred[label][2] / variants[label].n for label in variants), Fraction(0))
    theta = sxy / sxx if sxx else Fraction(0)
    grand_x = (Fraction(control.covariate.sum) + Fraction(treatment.covariate.sum)) / (
        control.n + treatment.n
    )
    adjusted = []
    for label, sums in variants.items():
        assert sums.covariate is not None
        yy, xx, xy = centred[label]
        mean = Fraction(sums.sum) / sums.n - theta * (Fraction(sums.covariate.sum) / sums.n - grand_x)
        raw_scale = sums.n * (
            Fraction(sums.sum_squares) + theta * theta * Fraction(sums.covariate.sum_squares)
        )
        residual = non_negative(yy - 2 * theta * xy + theta * theta * xx, raw_scale, label)
        variance = residual / (sums.n * (sums.n - 1))
        adjusted.append(
            Moments(sums.n, as_float(mean, f"{label} mean"), as_float(variance, f"{label} variance"))
        )
    return adjusted[0], adjusted[1], as_float(theta, "theta")


def compare_means_cuped(
    control: MeanSums,
    treatment: MeanSums,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> Comparison:
    """Welch on CUPED-adjusted means: same effect in expectation, less variance when x correlates with y."""
    check_alpha("alpha", alpha)
    check_min_learners(min_learners)
    method = "cuped welch"

    def compute() -> Comparison:
        suppress(min_learners, control=control.n, treatment=treatment.n)
        raw_c, raw_t = variant_moments(control, "control"), variant_moments(treatment, "treatment")
        adj_c, adj_t, theta = cuped_moments(control, treatment)
        raw = raw_c.variance_of_mean + raw_t.variance_of_mean
        if raw == 0:
            raise Unavailable(Status.INSUFFICIENT_DATA, "no variation in either variant: no interval or test")
        reduction = 1.0 - (adj_c.variance_of_mean + adj_t.variance_of_mean) / raw
        return _welch(adj_c, adj_t, alpha, method, Cuped(theta=theta, variance_reduction=reduction))

    return guarded(compute, lambda status, reason: Comparison(status, reason, method))


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for one proportion.

    Written out rather than scipy's ``binomtest(k, n).proportion_ci(method="wilson")`` (tests check they
    agree): binomtest also computes an exact p-value we do not use, 0.5–0.75 ms a call measured here.
    """
    p = successes / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _newcombe(control: RateSums, treatment: RateSums, z: float) -> Interval:
    """Newcombe's hybrid score interval (his method 10) for treatment − control."""
    p_c, p_t = control.successes / control.n, treatment.successes / treatment.n
    low_c, high_c = wilson(control.successes, control.n, z)
    low_t, high_t = wilson(treatment.successes, treatment.n, z)
    effect = p_t - p_c
    return Interval(
        effect - math.hypot(p_t - low_t, high_c - p_c), effect + math.hypot(high_t - p_t, p_c - low_c)
    )


def _pooled_z_p_value(control: RateSums, treatment: RateSums) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (Pearson's chi-square on the 2×2 table)."""
    pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
    standard_error = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / treatment.n))
    if standard_error == 0:
        return 1.0  # everyone or no one had the outcome, in both variants: no difference to test
    z = (treatment.successes / treatment.n - control.successes / control.n) / standard_error
    return float(2.0 * special.ndtr(-abs(z)))


def compare_rates(
    control: RateSums,
    treatment: RateSums,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> Comparison:
    """Difference of rates with Newcombe's interval, the pooled z-test's p-value, and the lift."""
    check_alpha("alpha", alpha)
    check_min_learners(min_learners)
    method = "newcombe interval, pooled z-test"

    def compute() -> Comparison:
        suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = rate_moments(control, "control"), rate_moments(treatment, "treatment")
        lift, lift_interval = _lift(moments_c, moments_t, alpha)
        return Comparison(
            status=Status.OK,
            reason="",
            method=method,
            control_mean=moments_c.mean,
            treatment_mean=moments_t.mean,
            effect=moments_t.mean - moments_c.mean,
            effect_interval=_newcombe(control, treatment, float(special.ndtri(1 - alpha / 2))),
            standard_error=math.sqrt(moments_c.variance_of_mean + moments_t.variance_of_mean),
            p_value=_pooled_z_p_value(control, treatment),
            relative_lift=lift,
            relative_lift_interval=lift_interval,
        )

    return guarded(compute, lambda status, reason: Comparison(status, reason, method))


def summarise_means(sums: MeanSums, *, min_learners: int = DEFAULT_MIN_LEARNERS) -> VariantSummary:
    """One variant's row: learners, mean and standard deviation (suppressed below k learners)."""
    check_min_learners(min_learners)

    def compute() -> VariantSummary:
        suppress(min_learners, variant=sums.n)
        if sums.n < 1:
            raise Unavailable(Status.INSUFFICIENT_DATA, "variant has no learners yet")
        mean = as_float(Fraction(sums.sum) / sums.n, "mean")
        sd = math.sqrt(variant_moments(sums, "variant").variance) if sums.n >= 2 else None
        return VariantSummary(Status.OK, "", sums.n, mean, sd)

    return guarded(compute, VariantSummary)


def summarise_rates(sums: RateSums, *, min_learners: int = DEFAULT_MIN_LEARNERS) -> VariantSummary:
    """One variant's row for a rate metric: learners, rate and sqrt(p(1 − p))."""
    check_min_learners(min_learners)

    def compute() -> VariantSummary:
        suppress(min_learners, variant=sums.n)
        moments = rate_moments(sums, "variant")
        return VariantSummary(Status.OK, "", sums.n, moments.mean, math.sqrt(moments.variance))

    return guarded(compute, VariantSummary)
