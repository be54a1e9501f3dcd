"""Experiment statistics from per-variant sums (pure: no I/O).

The exact rollups hold, per variant of an experiment, the number of exposed learners and, per metric, sums
over learners of their per-learner totals: ``sum`` and ``sum_squares`` (for CUPED also the pre-exposure
covariate's sum, sum of squares and the sum of metric x covariate products; for a rate metric the number of
learners with the outcome). Everything here is computed from those sums, never from per-learner rows:

- means: Welch's t-test and interval for the difference, the relative lift with a delta-method interval;
- rates: Newcombe's hybrid score interval for the difference, the pooled two-proportion z-test;
- CUPED: the same comparison on pre-exposure-adjusted means (theta pooled within variants, as in ANCOVA);
- sample-ratio mismatch: Pearson's chi-square against the configured weights;
- always-valid inference: the normal-mixture SPRT p-value and confidence sequence, safe to read every day;
- the sample size a minimum detectable effect needs, and how far the experiment has come.

A variant with fewer than ``min_learners`` learners yields no numbers (status ``suppressed``). Sums that allow
no answer give a status and a reason, never an exception or a NaN; invalid *parameters* (alpha, weights, a
negative count) raise ``ValueError`` naming the field. Formulas, assumptions and a worked example:
docs/experiments.md.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from enum import StrEnum
from fractions import Fraction
from typing import TypeVar

from scipy import special, stats

DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.8
DEFAULT_MIN_LEARNERS = 5
"""k of small-cell suppression (the default of issue 18): a variant with fewer learners shows no numbers."""
SRM_MIN_EXPOSURES = 100
"""The sample-ratio check waits for this many exposed learners in all variants together (as PostHog does)."""
SRM_P_THRESHOLD = 0.001
"""A sample-ratio p-value below this marks the experiment untrustworthy (docs/experiments.md: why so low)."""
DEFAULT_MIXING_SD = 0.1
"""Default mixing standard deviation tau of the always-valid test, in per-learner standard deviations."""
ROUNDING_TOLERANCE = 1e-9
"""Float sums may leave a centred sum of squares a hair below zero; beyond this relative slack it is a bug."""

_TOLERANCE = Fraction(ROUNDING_TOLERANCE)  # exact, so comparisons with huge fractions never go through float

T = TypeVar("T")


class Status(StrEnum):
    OK = "ok"
    SUPPRESSED = "suppressed"
    """A variant has fewer than k learners: no numbers (privacy), whatever the rest says."""
    INSUFFICIENT_DATA = "insufficient_data"
    """Too few learners, or no variation yet, for this computation."""
    INVALID_SUMS = "invalid_sums"
    """Sums no set of learners could produce (a rollup bug), or beyond floating-point range."""


# ---------------------------------------------------------------------------------------------- inputs


def _count(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{owner}.{name}: must be a whole number >= 0, got {value!r}")
    return int(value)


def _real(owner: str, name: str, value: object) -> float:
    """A finite number; integers stay exact (the sums are turned into fractions, not floats)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}.{name}: must be a number, got {value!r}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"{owner}.{name}: must be finite and within floating-point range, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


@dataclass(frozen=True, slots=True)
class Covariate:
    """Sums over a variant's learners of a pre-exposure covariate x (CUPED): Σx, Σx², Σ(y·x)."""

    sum: float
    sum_squares: float
    cross_sum: float

    def __post_init__(self) -> None:
        for name in ("sum", "sum_squares", "cross_sum"):
            object.__setattr__(self, name, _real("Covariate", name, getattr(self, name)))
        if self.sum_squares < 0:
            raise ValueError(f"Covariate.sum_squares: must be >= 0, got {self.sum_squares!r}")


@dataclass(frozen=True, slots=True)
class MeanSums:
    """One variant, one metric: n learners, Σy and Σy² of their per-learner totals y (and CUPED's sums)."""

    n: int
    sum: float
    sum_squares: float
    covariate: Covariate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count("MeanSums", "n", self.n))
        for name in ("sum", "sum_squares"):
            object.__setattr__(self, name, _real("MeanSums", name, getattr(self, name)))
        if self.sum_squares < 0:
            raise ValueError(f"MeanSums.sum_squares: must be >= 0, got {self.sum_squares!r}")


@dataclass(frozen=True, slots=True)
class RateSums:
    """One variant, one rate metric: n learners, of whom ``successes`` had the outcome."""

    n: int
    successes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count("RateSums", "n", self.n))
        object.__setattr__(self, "successes", _count("RateSums", "successes", self.successes))
        if self.successes > self.n:
            raise ValueError(f"RateSums.successes: must be <= n ({self.n}), got {self.successes}")


@dataclass(frozen=True, slots=True)
class MinimumEffect:
    """The smallest effect worth detecting: absolute (metric units) or relative to the control mean."""

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        value = _real("MinimumEffect", "value", self.value)
        if value <= 0:
            raise ValueError(f"MinimumEffect.value: must be > 0, got {value!r}")
        object.__setattr__(self, "value", float(value))


def _check_alpha(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and 0.0 < value < 1.0):
        raise ValueError(f"{name}: must be strictly between 0 and 1, got {value!r}")


def _check_min_learners(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"min_learners: must be a whole number >= 0, got {value!r}")


# --------------------------------------------------------------------------------------------- outputs


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


# ------------------------------------------------------------------------------------ exact arithmetic


class _Unavailable(Exception):
    """Internal: this computation has no answer for these sums; becomes a status, never leaves the module."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Moments:
    n: int
    mean: float
    variance: float
    """Sample variance (n - 1) of the per-learner values."""

    @property
    def variance_of_mean(self) -> float:
        return self.variance / self.n


def _comoment(n: int, sum_a: float, sum_b: float, sum_ab: float) -> Fraction:
    """n·Σab − Σa·Σb computed exactly: n times the centred cross sum, free of cancellation error."""
    return n * Fraction(sum_ab) - Fraction(sum_a) * Fraction(sum_b)


def _non_negative(value: Fraction, scale: Fraction, what: str) -> Fraction:
    if value >= 0:
        return value
    if -value <= _TOLERANCE * abs(scale):
        return Fraction(0)
    raise _Unavailable(Status.INVALID_SUMS, f"{what}: no set of learners has these sums")


def _float(value: Fraction | float, what: str) -> float:
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise _Unavailable(Status.INVALID_SUMS, f"{what} is beyond floating-point range")
    return result


def _suppress(min_learners: int, **learners: int) -> None:
    small = [label for label, n in learners.items() if n < min_learners]
    if small:
        raise _Unavailable(
            Status.SUPPRESSED,
            f"fewer than {min_learners} learners in {' and '.join(small)}: no numbers shown",
        )


def _finite(value: object) -> bool:
    """No NaN or infinity anywhere in a result (dataclasses, tuples and floats, recursively)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(item) for item in value)
    if is_dataclass(value):
        return all(_finite(getattr(value, f.name)) for f in fields(value))
    return True


def _guarded(compute: Callable[[], T], unavailable: Callable[[Status, str], T]) -> T:
    """Run ``compute``; a missing answer or a non-finite number becomes ``unavailable(status, reason)``."""
    try:
        result = compute()
    except _Unavailable as gap:
        return unavailable(gap.status, gap.reason)
    except OverflowError:
        return unavailable(Status.INVALID_SUMS, "numbers beyond floating-point range")
    if not _finite(result):
        return unavailable(Status.INVALID_SUMS, "numbers beyond floating-point range")
    return result


def _moments(sums: MeanSums, label: str) -> _Moments:
    if sums.n < 2:
        raise _Unavailable(Status.INSUFFICIENT_DATA, f"{label} needs at least 2 learners for a variance")
    centred = _non_negative(
        _comoment(sums.n, sums.sum, sums.sum, sums.sum_squares),
        sums.n * Fraction(sums.sum_squares),
        f"{label} sum of squares",
    )
    variance = _float(centred / (sums.n * (sums.n - 1)), f"{label} variance")
    return _Moments(sums.n, _float(Fraction(sums.sum) / sums.n, f"{label} mean"), variance)


def _rate_moments(sums: RateSums, label: str) -> _Moments:
    """A rate as the mean of 0/1 outcomes; variance p(1 − p), the normal approximation's."""
    if sums.n < 1:
        raise _Unavailable(Status.INSUFFICIENT_DATA, f"{label} has no learners yet")
    rate = sums.successes / sums.n
    return _Moments(sums.n, rate, rate * (1.0 - rate))


# -------------------------------------------------------------------------------------- comparisons


def _welch_df(control: _Moments, treatment: _Moments) -> float:
    """Welch–Satterthwaite degrees of freedom, written in variance shares so nothing over- or underflows."""
    a, b = control.variance_of_mean, treatment.variance_of_mean
    share_a, share_b = a / (a + b), b / (a + b)
    return 1.0 / (share_a * share_a / (control.n - 1) + share_b * share_b / (treatment.n - 1))


def _lift(control: _Moments, treatment: _Moments, alpha: float) -> tuple[float | None, Interval | None]:
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
    control: _Moments, treatment: _Moments, alpha: float, method: str, cuped: Cuped | None
) -> Comparison:
    variance = control.variance_of_mean + treatment.variance_of_mean
    if variance == 0:
        raise _Unavailable(Status.INSUFFICIENT_DATA, "no variation in either variant: no interval or test")
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
    _check_alpha("alpha", alpha)
    _check_min_learners(min_learners)
    method = "welch"

    def compute() -> Comparison:
        _suppress(min_learners, control=control.n, treatment=treatment.n)
        return _welch(_moments(control, "control"), _moments(treatment, "treatment"), alpha, method, None)

    return _guarded(compute, lambda status, reason: Comparison(status, reason, method))


def _centred_sums(sums: MeanSums, label: str) -> tuple[Fraction, Fraction, Fraction]:
    """n times the centred Σ(y−ȳ)², Σ(x−x̄)², Σ(y−ȳ)(x−x̄), exactly, checked for consistency."""
    assert sums.covariate is not None
    x = sums.covariate
    yy = _non_negative(
        _comoment(sums.n, sums.sum, sums.sum, sums.sum_squares), sums.n * Fraction(sums.sum_squares), label
    )
    xx = _non_negative(
        _comoment(sums.n, x.sum, x.sum, x.sum_squares), sums.n * Fraction(x.sum_squares), label
    )
    xy = _comoment(sums.n, sums.sum, x.sum, x.cross_sum)
    # Cauchy–Schwarz: xy² <= xx·yy for any data; float sums may miss by rounding of the raw magnitudes.
    slack = (_TOLERANCE * sums.n) ** 2 * Fraction(sums.sum_squares) * Fraction(x.sum_squares)
    if xy * xy > xx * yy + slack:
        raise _Unavailable(Status.INVALID_SUMS, f"{label} covariate sums: no set of learners has these sums")
    return yy, xx, xy


def _cuped_moments(control: MeanSums, treatment: MeanSums) -> tuple[_Moments, _Moments, float]:
    """Moments of y − theta·(x − x̄) per variant, theta = pooled within-variant slope (exact fractions)."""
    if control.covariate is None or treatment.covariate is None:
        raise _Unavailable(Status.INSUFFICIENT_DATA, "no pre-exposure covariate sums for CUPED")
    variants = {"control": control, "treatment": treatment}
    for label, sums in variants.items():
        if sums.n < 2:
            raise _Unavailable(Status.INSUFFICIENT_DATA, f"{label} needs at least 2 learners for a variance")
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
        residual = _non_negative(yy - 2 * theta * xy + theta * theta * xx, raw_scale, label)
        variance = residual / (sums.n * (sums.n - 1))
        adjusted.append(
            _Moments(sums.n, _float(mean, f"{label} mean"), _float(variance, f"{label} variance"))
        )
    return adjusted[0], adjusted[1], _float(theta, "theta")


def compare_means_cuped(
    control: MeanSums,
    treatment: MeanSums,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> Comparison:
    """Welch on CUPED-adjusted means: same effect in expectation, less variance when x correlates with y."""
    _check_alpha("alpha", alpha)
    _check_min_learners(min_learners)
    method = "cuped welch"

    def compute() -> Comparison:
        _suppress(min_learners, control=control.n, treatment=treatment.n)
        raw_c, raw_t = _moments(control, "control"), _moments(treatment, "treatment")
        adj_c, adj_t, theta = _cuped_moments(control, treatment)
        raw = raw_c.variance_of_mean + raw_t.variance_of_mean
        if raw == 0:
            raise _Unavailable(
                Status.INSUFFICIENT_DATA, "no variation in either variant: no interval or test"
            )
        reduction = 1.0 - (adj_c.variance_of_mean + adj_t.variance_of_mean) / raw
        return _welch(adj_c, adj_t, alpha, method, Cuped(theta=theta, variance_reduction=reduction))

    return _guarded(compute, lambda status, reason: Comparison(status, reason, method))


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
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
    low_c, high_c = _wilson(control.successes, control.n, z)
    low_t, high_t = _wilson(treatment.successes, treatment.n, z)
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
    _check_alpha("alpha", alpha)
    _check_min_learners(min_learners)
    method = "newcombe interval, pooled z-test"

    def compute() -> Comparison:
        _suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = _rate_moments(control, "control"), _rate_moments(treatment, "treatment")
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

    return _guarded(compute, lambda status, reason: Comparison(status, reason, method))


def summarise_means(sums: MeanSums, *, min_learners: int = DEFAULT_MIN_LEARNERS) -> VariantSummary:
    """One variant's row: learners, mean and standard deviation (suppressed below k learners)."""
    _check_min_learners(min_learners)

    def compute() -> VariantSummary:
        _suppress(min_learners, variant=sums.n)
        if sums.n < 1:
            raise _Unavailable(Status.INSUFFICIENT_DATA, "variant has no learners yet")
        mean = _float(Fraction(sums.sum) / sums.n, "mean")
        sd = math.sqrt(_moments(sums, "variant").variance) if sums.n >= 2 else None
        return VariantSummary(Status.OK, "", sums.n, mean, sd)

    return _guarded(compute, VariantSummary)


def summarise_rates(sums: RateSums, *, min_learners: int = DEFAULT_MIN_LEARNERS) -> VariantSummary:
    """One variant's row for a rate metric: learners, rate and sqrt(p(1 − p))."""
    _check_min_learners(min_learners)

    def compute() -> VariantSummary:
        _suppress(min_learners, variant=sums.n)
        moments = _rate_moments(sums, "variant")
        return VariantSummary(Status.OK, "", sums.n, moments.mean, math.sqrt(moments.variance))

    return _guarded(compute, VariantSummary)


# ---------------------------------------------------------------------------------- sample ratio (SRM)


def _srm_inputs(counts: Sequence[int], weights: Sequence[float]) -> tuple[list[int], list[float]]:
    if len(counts) < 2 or len(counts) != len(weights):
        raise ValueError(
            f"counts, weights: need one count and one weight per variant, at least two variants "
            f"(got {len(counts)} counts, {len(weights)} weights)"
        )
    checked_counts = [_count("counts", str(i), c) for i, c in enumerate(counts)]
    checked_weights = [_real("weights", str(i), w) for i, w in enumerate(weights)]
    if any(w <= 0 for w in checked_weights):
        raise ValueError(f"weights: every weight must be > 0, got {list(weights)!r}")
    return checked_counts, checked_weights


def sample_ratio_check(
    counts: Sequence[int],
    weights: Sequence[float],
    *,
    min_exposures: int = SRM_MIN_EXPOSURES,
    threshold: float = SRM_P_THRESHOLD,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> SampleRatioCheck:
    """Pearson's chi-square of exposed learners per variant against the configured weights.

    Below ``min_exposures`` in all, nothing is checked (``mismatch`` None). A variant under k learners hides
    the statistic, p-value and shares, but the mismatch flag stays: it is the warning that matters, one bit.
    """
    observed, configured = _srm_inputs(counts, weights)
    _check_alpha("threshold", threshold)
    _check_min_learners(min_learners)
    total_weight = math.fsum(configured)
    expected_shares = tuple(w / total_weight for w in configured)
    total = sum(observed)
    if total < min_exposures:
        reason = f"fewer than {min_exposures} exposed learners: the sample-ratio check has not started"
        return SampleRatioCheck(Status.INSUFFICIENT_DATA, reason, None, expected_shares)
    test = stats.chisquare(observed, [total * share for share in expected_shares])
    p_value, statistic = float(test.pvalue), float(test.statistic)
    mismatch = p_value < threshold
    reason = (
        f"sample ratio mismatch (p < {threshold}): the split differs from the weights; results untrustworthy"
        if mismatch
        else ""
    )
    if any(n < min_learners for n in observed):
        hidden = f"fewer than {min_learners} learners in a variant: no numbers shown"
        return SampleRatioCheck(
            Status.SUPPRESSED, f"{reason}; {hidden}" if reason else hidden, mismatch, expected_shares
        )
    observed_shares = tuple(n / total for n in observed)
    return SampleRatioCheck(Status.OK, reason, mismatch, expected_shares, p_value, statistic, observed_shares)


# ----------------------------------------------------------------------------- always-valid inference


def _mixture(effect: float, variance: float, mixing_variance: float, alpha: float) -> SequentialResult:
    """Normal-mixture SPRT for effect ~ N(theta, variance), mixing theta ~ N(0, tau²) under the alternative.

    Likelihood ratio L = sqrt(V/(V+tau²)) · exp(tau²·effect² / (2V(V+tau²))); always-valid p = min(1, 1/L);
    the confidence sequence is the set of theta where the shifted L stays below 1/alpha.
    """
    ratio = mixing_variance / variance  # u = tau²/V, grows like the sample size
    if not 0.0 < ratio < math.inf:
        raise _Unavailable(Status.INVALID_SUMS, "mixing variance and the effect's variance are too far apart")
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
    control: _Moments, treatment: _Moments, alpha: float, mixing_variance: float | None
) -> SequentialResult:
    variance = control.variance_of_mean + treatment.variance_of_mean
    if variance == 0:
        raise _Unavailable(Status.INSUFFICIENT_DATA, "no variation in either variant: no interval or test")
    if mixing_variance is None:
        dof = control.n + treatment.n - 2
        pooled = ((control.n - 1) * control.variance + (treatment.n - 1) * treatment.variance) / max(dof, 1)
        mixing_variance = DEFAULT_MIXING_SD * DEFAULT_MIXING_SD * pooled
        if mixing_variance == 0:
            raise _Unavailable(Status.INSUFFICIENT_DATA, "no variation to scale the mixing variance by")
    return _mixture(treatment.mean - control.mean, variance, mixing_variance, alpha)


def _check_mixing_variance(value: float | None) -> None:
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
    _check_alpha("alpha", alpha)
    _check_min_learners(min_learners)
    _check_mixing_variance(mixing_variance)

    def compute() -> SequentialResult:
        _suppress(min_learners, control=control.n, treatment=treatment.n)
        if cuped:
            moments_c, moments_t, _ = _cuped_moments(control, treatment)
        else:
            moments_c, moments_t = _moments(control, "control"), _moments(treatment, "treatment")
        return _sequential(moments_c, moments_t, alpha, mixing_variance)

    return _guarded(compute, SequentialResult)


def sequential_rates(
    control: RateSums,
    treatment: RateSums,
    *,
    alpha: float = DEFAULT_ALPHA,
    mixing_variance: float | None = None,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> SequentialResult:
    """Always-valid p-value and confidence sequence for the difference of rates (normal approximation)."""
    _check_alpha("alpha", alpha)
    _check_min_learners(min_learners)
    _check_mixing_variance(mixing_variance)

    def compute() -> SequentialResult:
        _suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = _rate_moments(control, "control"), _rate_moments(treatment, "treatment")
        return _sequential(moments_c, moments_t, alpha, mixing_variance)

    return _guarded(compute, SequentialResult)


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


# -------------------------------------------------------------------------------------- sample size


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
    checked = [_real("weights", str(i), w) for i, w in enumerate(weights)]
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
    _check_alpha("alpha", alpha)
    _check_alpha("power", power)
    shares = _shares(weights)
    if _real("required_sample_size", "effect", effect) == 0:
        raise ValueError("effect: must be non-zero")
    variances = (
        _real("required_sample_size", "variance_control", variance_control),
        _real("required_sample_size", "variance_treatment", variance_treatment),
    )
    if min(variances) < 0 or max(variances) == 0:
        raise ValueError(f"variance_control, variance_treatment: must be >= 0, not both 0, got {variances!r}")
    total = _required_total(effect, (float(variances[0]), float(variances[1])), shares, alpha, power)
    if not math.isfinite(total):
        raise ValueError("effect: too small against these variances for any finite sample size")
    return max(2, math.ceil(shares[0] * total)), max(2, math.ceil(shares[1] * total))


def _progress(
    effect: float,
    control: _Moments,
    treatment: _Moments,
    alternative_variance: float,
    shares: tuple[float, float],
    alpha: float,
    power: float,
) -> SampleSize:
    variances = (control.variance, alternative_variance)
    if max(variances) == 0:
        raise _Unavailable(Status.INSUFFICIENT_DATA, "no variation yet to plan with")
    if effect == 0:  # e.g. a relative minimum effect of a control mean that is still 0
        raise _Unavailable(Status.INSUFFICIENT_DATA, "the minimum effect is 0 here: nothing to plan for")
    total = _required_total(effect, variances, shares, alpha, power)
    if not math.isfinite(total) or total > 1e15:
        raise _Unavailable(Status.INSUFFICIENT_DATA, "effect too small against the variance to plan for")
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
        raise _Unavailable(Status.INSUFFICIENT_DATA, "a relative effect needs a non-zero control mean")
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
    _check_alpha("alpha", alpha)
    _check_alpha("power", power)
    _check_min_learners(min_learners)
    shares = _shares(weights)

    def compute() -> SampleSize:
        _suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = _moments(control, "control"), _moments(treatment, "treatment")
        effect = _absolute_effect(minimum, moments_c.mean)
        return _progress(effect, moments_c, moments_t, moments_t.variance, shares, alpha, power)

    return _guarded(compute, SampleSize)


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
    _check_alpha("alpha", alpha)
    _check_alpha("power", power)
    _check_min_learners(min_learners)
    shares = _shares(weights)

    def compute() -> SampleSize:
        _suppress(min_learners, control=control.n, treatment=treatment.n)
        moments_c, moments_t = _rate_moments(control, "control"), _rate_moments(treatment, "treatment")
        effect = _absolute_effect(minimum, moments_c.mean)
        candidates = [
            moments_c.mean + s * effect for s in (1.0, -1.0) if 0.0 <= moments_c.mean + s * effect <= 1.0
        ]
        if not candidates:
            raise _Unavailable(
                Status.INSUFFICIENT_DATA, "the control rate plus or minus the effect leaves [0, 1]"
            )
        alternative = max(candidates, key=lambda rate: rate * (1.0 - rate))
        return _progress(
            effect, moments_c, moments_t, alternative * (1.0 - alternative), shares, alpha, power
        )

    return _guarded(compute, SampleSize)
