"""The experiment statistics, checked against scipy/statsmodels and over hundreds of simulated experiments.

Server-free and fast: every simulation draws its learners with numpy in one go and feeds the module the same
per-variant sums the rollups will hold. Seeds are fixed; tolerances are binomial (a rate over E experiments is
compared with its nominal value by an exact binomial test), so a pass is not luck of one seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from studyin_analytics.aggregator.experiments import comparisons, exact, sequential
from studyin_analytics.aggregator.experiments import statistics as stats
from studyin_analytics.aggregator.experiments.statistics import (
    Comparison,
    Covariate,
    MeanSums,
    MinimumEffect,
    RateSums,
    SampleRatioCheck,
    SampleSize,
    SequentialResult,
    Status,
    VariantSummary,
)

ALPHA = 0.05
FloatArray = np.ndarray


def mean_sums(values: FloatArray, covariate: FloatArray | None = None) -> MeanSums:
    """The sums the rollups hold for one variant, from per-learner totals the test keeps itself."""
    cov = None
    if covariate is not None:
        cov = Covariate(
            float(covariate.sum()), float((covariate * covariate).sum()), float((values * covariate).sum())
        )
    return MeanSums(len(values), float(values.sum()), float((values * values).sum()), cov)


def rate_is_nominal(hits: int, trials: int, nominal: float) -> bool:
    """Two-sided exact binomial test at 0.001: the observed rate is compatible with ``nominal``."""
    return bool(scipy.stats.binomtest(hits, trials, nominal).pvalue > 0.001)


def rate_is_at_most(hits: int, trials: int, nominal: float) -> bool:
    """One-sided: the observed rate is not significantly above ``nominal`` (at 0.001)."""
    return bool(scipy.stats.binomtest(hits, trials, nominal, alternative="greater").pvalue > 0.001)


def numbers_of(result: object) -> Iterator[object]:
    """Every value of a result except its status, reason, method and flag (what suppression must blank)."""
    assert is_dataclass(result)
    for f in fields(result):
        if f.name not in {"status", "reason", "method", "mismatch", "expected_shares"}:
            yield getattr(result, f.name)


# --------------------------------------------------------------------- equal to scipy and statsmodels


@pytest.mark.parametrize("seed", range(6))
def test_welch_equals_scipy_on_the_per_learner_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Study minutes: many learners at 0, the rest skewed; the variants differ in size and spread.
    n_c, n_t = (int(n) for n in rng.integers(20, 3000, size=2))
    control = rng.gamma(0.6, 30.0, size=n_c) * (rng.random(n_c) < 0.7)
    treatment = rng.gamma(0.6, 33.0, size=n_t) * (rng.random(n_t) < 0.7)
    control, treatment = np.round(control), np.round(treatment * rng.uniform(0.5, 2))
    for alpha in (0.05, 0.1, 0.01):
        result = stats.compare_means(mean_sums(control), mean_sums(treatment), alpha=alpha)
        reference = scipy.stats.ttest_ind(treatment, control, equal_var=False)
        interval = reference.confidence_interval(confidence_level=1 - alpha)
        assert result.status is Status.OK
        assert result.effect == pytest.approx(treatment.mean() - control.mean(), rel=1e-12, abs=1e-12)
        assert result.degrees_of_freedom == pytest.approx(reference.df, rel=1e-9)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-8, abs=1e-300)
        assert result.effect_interval is not None
        assert result.effect_interval.low == pytest.approx(interval.low, rel=1e-9, abs=1e-12)
        assert result.effect_interval.high == pytest.approx(interval.high, rel=1e-9, abs=1e-12)
        # The same df in interval and test: the interval excludes 0 exactly when p < alpha.
        assert (result.effect_interval.low > 0 or result.effect_interval.high < 0) == (result.p_value < alpha)


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        ((48, 80), (56, 70)),
        ((300, 1000), (330, 1000)),
        ((0, 50), (3, 60)),
        ((40, 40), (38, 40)),
        ((1, 7), (6, 9)),
    ],
)
def test_rates_equal_statsmodels_newcombe_and_pooled_z(
    control: tuple[int, int], treatment: tuple[int, int]
) -> None:
    result = stats.compare_rates(
        RateSums(control[1], control[0]), RateSums(treatment[1], treatment[0]), min_learners=1
    )
    low, high = confint_proportions_2indep(
        treatment[0], treatment[1], control[0], control[1], method="newcomb", compare="diff", alpha=ALPHA
    )
    _, p_value = proportions_ztest([treatment[0], control[0]], [treatment[1], control[1]])
    assert result.status is Status.OK and result.effect_interval is not None
    assert result.effect_interval.low == pytest.approx(low, abs=1e-12)
    assert result.effect_interval.high == pytest.approx(high, abs=1e-12)
    assert result.p_value == pytest.approx(p_value, rel=1e-9)
    assert result.effect == pytest.approx(treatment[0] / treatment[1] - control[0] / control[1], abs=1e-15)


@pytest.mark.parametrize(("successes", "n"), [(0, 1), (0, 30), (7, 30), (30, 30), (4999, 10_000)])
def test_wilson_equals_scipy(successes: int, n: int) -> None:
    z = float(scipy.stats.norm.ppf(1 - ALPHA / 2))
    reference = scipy.stats.binomtest(successes, n).proportion_ci(1 - ALPHA, method="wilson")
    low, high = comparisons.wilson(successes, n, z)
    assert (low, high) == pytest.approx((reference.low, reference.high), abs=1e-12)


def test_rates_with_no_difference_at_the_boundary_have_p_one() -> None:
    result = stats.compare_rates(RateSums(500, 0), RateSums(480, 0))
    assert result.status is Status.OK and result.p_value == 1.0
    assert result.effect_interval is not None and result.effect_interval.low < 0 < result.effect_interval.high
    assert result.relative_lift is None  # no lift over a zero control rate


def test_cuped_equals_ancova_from_statsmodels() -> None:
    rng = np.random.default_rng(7)
    x_c, x_t = rng.gamma(2.0, 10.0, size=700), rng.gamma(2.0, 10.0, size=650)
    y_c = 0.8 * x_c + rng.normal(0, 8, size=700)
    y_t = 0.8 * x_t + rng.normal(0, 8, size=650) + 1.5
    result = stats.compare_means_cuped(mean_sums(y_c, x_c), mean_sums(y_t, x_t))
    design = np.column_stack([np.ones(1350), np.r_[np.zeros(700), np.ones(650)], np.r_[x_c, x_t]])
    fit = OLS(np.r_[y_c, y_t], design).fit(cov_type="HC2")
    assert result.status is Status.OK and result.cuped is not None
    # CUPED with theta pooled within variants is ANCOVA: the same treatment coefficient and slope.
    assert result.effect == pytest.approx(fit.params[1], rel=1e-9)
    assert result.cuped.theta == pytest.approx(fit.params[2], rel=1e-9)
    # Its standard error is the heteroskedasticity-robust one, up to theta being estimated (O(1/n)).
    assert result.standard_error == pytest.approx(fit.bse[1], rel=0.01)


def test_required_sample_size_equals_statsmodels_power() -> None:
    solver = NormalIndPower()
    for sd, effect, ratio in [(10.0, 1.0, 1.0), (25.0, 1.25, 1.0), (1.0, 0.2, 2.0), (0.5, 0.05, 0.5)]:
        control, treatment = stats.required_sample_size(effect, sd * sd, sd * sd, weights=(1.0, ratio))
        nobs1 = solver.solve_power(effect_size=effect / sd, alpha=ALPHA, power=0.8, ratio=ratio)
        # statsmodels also counts the far tail's power (~1e-6 here); both round up to whole learners.
        assert abs(control - nobs1) <= 1 and abs(treatment - nobs1 * ratio) <= 1


# ------------------------------------------------------------------------------- A/A and peeking


@dataclass
class DailySums:
    n: FloatArray  # (experiments, 2, days): learners exposed so far per variant
    sums: FloatArray  # (experiments, 2, days): Σ of their per-learner totals so far
    squares: FloatArray  # (experiments, 2, days): Σ of squares


def simulate_study_minutes(seed: int, experiments: int, days: int, learners: int) -> DailySums:
    """Each variant's ``learners`` are exposed on a random day and keep studying afterwards: each day 30 % of
    the exposed study, for exponential minutes scaled by their own gamma propensity (heavy-tailed, like real
    study time). A learner's total grows after exposure, as the rollups will see it. Exposure days are drawn
    per learner: a fixed daily quota per variant would balance the variants by design and make every test
    conservative (measured: 2-4 % instead of 5 %)."""
    rng = np.random.default_rng(seed)
    shape = (experiments, 2, learners)
    exposure_day = rng.integers(0, days, size=shape)
    propensity = rng.gamma(0.7, 20.0, size=shape)
    totals = np.zeros(shape)
    data = DailySums(*(np.empty((experiments, 2, days)) for _ in range(3)))
    for day in range(days):
        exposed = exposure_day <= day
        totals += rng.exponential(1.0, size=shape) * propensity * ((rng.random(shape) < 0.3) & exposed)
        data.n[..., day], data.sums[..., day] = exposed.sum(-1), totals.sum(-1)
        data.squares[..., day] = (totals * totals).sum(-1)
    return data


def daily_looks(data: DailySums, experiment: int) -> Iterator[tuple[MeanSums, MeanSums]]:
    for day in range(data.n.shape[-1]):
        control, treatment = (
            MeanSums(
                int(data.n[experiment, arm, day]),
                float(data.sums[experiment, arm, day]),
                float(data.squares[experiment, arm, day]),
            )
            for arm in (0, 1)
        )
        yield control, treatment


def p_value(result: Comparison | SequentialResult) -> float:
    assert result.status is Status.OK and result.p_value is not None, result
    return result.p_value


AA_EXPERIMENTS, AA_DAYS = 600, 20


@pytest.fixture(scope="module")
def aa_outcomes() -> dict[str, int]:
    """600 A/A experiments of 20 days (~1,000 learners per variant at the end), each looked at every day."""
    data = simulate_study_minutes(seed=19, experiments=AA_EXPERIMENTS, days=AA_DAYS, learners=1_000)
    rejected = {"fixed_final": 0, "fixed_daily": 0, "sequential_daily": 0, "sequential_final_covered": 0}
    for e in range(AA_EXPERIMENTS):
        fixed = [stats.compare_means(c, t) for c, t in daily_looks(data, e)]
        sequential = [stats.sequential_means(c, t) for c, t in daily_looks(data, e)]
        rejected["fixed_final"] += p_value(fixed[-1]) < ALPHA
        rejected["fixed_daily"] += any(p_value(r) < ALPHA for r in fixed)
        rejected["sequential_daily"] += any(p_value(r) < ALPHA for r in sequential)
        watched = stats.watch(sequential)
        assert watched.interval is not None
        rejected["sequential_final_covered"] += watched.interval.low <= 0 <= watched.interval.high
    print(f"\nA/A over {AA_EXPERIMENTS} experiments x {AA_DAYS} daily looks: {rejected}")
    return rejected


def test_aa_fixed_horizon_false_positive_rate_is_nominal(aa_outcomes: dict[str, int]) -> None:
    assert rate_is_nominal(aa_outcomes["fixed_final"], AA_EXPERIMENTS, ALPHA)


def test_aa_fixed_horizon_read_daily_inflates_false_positives(aa_outcomes: dict[str, int]) -> None:
    """Why the sequential method exists: stop at the first day p < 0.05 and far more than 5 % 'win'."""
    hits = aa_outcomes["fixed_daily"]
    assert scipy.stats.binomtest(hits, AA_EXPERIMENTS, ALPHA, alternative="greater").pvalue < 1e-6
    assert hits / AA_EXPERIMENTS > 2 * ALPHA


def test_aa_sequential_read_daily_keeps_false_positives_at_most_alpha(aa_outcomes: dict[str, int]) -> None:
    assert rate_is_at_most(aa_outcomes["sequential_daily"], AA_EXPERIMENTS, ALPHA)
    # The watched (intersected) confidence sequence still covers the true effect, 0, as often as promised.
    misses = AA_EXPERIMENTS - aa_outcomes["sequential_final_covered"]
    assert rate_is_at_most(misses, AA_EXPERIMENTS, ALPHA)


def test_aa_rates_read_daily() -> None:
    """The same for a rate (day-7 return, 30 %): fixed-horizon read daily inflates, sequential does not."""
    rng = np.random.default_rng(23)
    experiments, days, arrivals = 500, 20, 40
    outcomes = rng.random((experiments, 2, days * arrivals)) < 0.3
    successes = outcomes.reshape(experiments, 2, days, arrivals).sum(-1).cumsum(-1)
    fixed_daily = sequential_daily = fixed_final = 0
    for e in range(experiments):
        looks = [
            (
                RateSums((d + 1) * arrivals, int(successes[e, 0, d])),
                RateSums((d + 1) * arrivals, int(successes[e, 1, d])),
            )
            for d in range(days)
        ]
        fixed = [p_value(stats.compare_rates(c, t)) for c, t in looks]
        sequential = [p_value(stats.sequential_rates(c, t)) for c, t in looks]
        fixed_final += fixed[-1] < ALPHA
        fixed_daily += any(p < ALPHA for p in fixed)
        sequential_daily += any(p < ALPHA for p in sequential)
    print(f"\nA/A rates, {experiments} x {days} looks: {fixed_final=} {fixed_daily=} {sequential_daily=}")
    assert rate_is_nominal(fixed_final, experiments, ALPHA)
    assert fixed_daily / experiments > 2 * ALPHA
    assert rate_is_at_most(sequential_daily, experiments, ALPHA)


# ----------------------------------------------------------------------------------------- power


POWER_EXPERIMENTS = 1000


def simulate_fixed(seed: int, per_arm: int, shift: float) -> tuple[FloatArray, FloatArray]:
    """Per experiment, per-learner totals: gamma(2, 5) minutes (mean 10, sd 7.07); treatment shifted."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 5.0, size=(POWER_EXPERIMENTS, 2, per_arm))
    values[:, 1] += shift
    return values.sum(-1), (values * values).sum(-1)


def detections(sums: FloatArray, squares: FloatArray, per_arm: int) -> tuple[int, int]:
    fixed = sequential = 0
    for e in range(POWER_EXPERIMENTS):
        control, treatment = (MeanSums(per_arm, float(sums[e, a]), float(squares[e, a])) for a in (0, 1))
        fixed += p_value(stats.compare_means(control, treatment)) < ALPHA
        sequential += p_value(stats.sequential_means(control, treatment)) < ALPHA
    return fixed, sequential


def sequential_power(effect: float, variance: float, per_arm: int) -> float:
    """Chance that one look at ``per_arm`` learners per variant finds the confidence sequence excluding 0."""
    effect_variance = 2 * variance / per_arm
    boundary = sequential.mixture(0.0, effect_variance, stats.DEFAULT_MIXING_SD**2 * variance, ALPHA)
    assert boundary.interval is not None
    shift, half = effect / math.sqrt(effect_variance), boundary.interval.high / math.sqrt(effect_variance)
    return float(scipy.stats.norm.cdf(shift - half) + scipy.stats.norm.cdf(-shift - half))


def test_injected_effect_is_detected_with_the_predicted_power() -> None:
    effect, variance = 1.0, 50.0  # a 10 % lift in mean minutes, d = 0.14
    per_arm, _ = stats.required_sample_size(effect, variance, variance)  # power 0.8, alpha 0.05
    assert per_arm == 785  # 2 · (1.96 + 0.8416)² · 50 / 1², rounded up
    measured = {}
    for size, seed in [(per_arm, 1), (per_arm // 2, 2)]:
        predicted = NormalIndPower().power(effect / math.sqrt(variance), size, ALPHA)
        predicted_sequential = sequential_power(effect, variance, size)
        fixed, sequential = detections(*simulate_fixed(seed, size, effect), size)
        measured[size] = (predicted, fixed, predicted_sequential, sequential)
        assert rate_is_nominal(fixed, POWER_EXPERIMENTS, predicted)
        assert abs(fixed / POWER_EXPERIMENTS - predicted) < 0.05
        # Always-valid costs power at any one size (the price of peeking freely), as its boundary predicts.
        assert rate_is_nominal(sequential, POWER_EXPERIMENTS, predicted_sequential)
        assert sequential < fixed
    print(f"\npower (fixed predicted, detected of 1000, sequential predicted, detected) per size: {measured}")


def test_sample_size_progress_reports_the_power_so_far() -> None:
    rng = np.random.default_rng(5)
    control, treatment = rng.gamma(2.0, 5.0, size=400), rng.gamma(2.0, 5.0, size=400) + 1.0
    size = stats.sample_size_means(
        mean_sums(control), mean_sums(treatment), MinimumEffect(0.1, relative=True)
    )
    assert size.status is Status.OK and size.effect == pytest.approx(0.1 * control.mean())
    assert size.required_control is not None and size.progress is not None and size.power_now is not None
    assert size.progress == pytest.approx(400 / size.required_control, rel=1e-3)
    expected_power = NormalIndPower().power(
        size.effect / math.sqrt((control.var(ddof=1) + treatment.var(ddof=1)) / 2), 400, ALPHA
    )
    assert size.power_now == pytest.approx(expected_power, abs=0.01)
    rates = stats.sample_size_rates(RateSums(1000, 300), RateSums(1000, 310), MinimumEffect(0.03))
    # Planned for 30 % -> 33 % (the side nearer 1/2, whose variance is larger), by the documented formula.
    z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
    assert rates.required_control == math.ceil(z * z * (0.3 * 0.7 + 0.33 * 0.67) / 0.03**2)


# -------------------------------------------------------------------------------- SRM and CUPED


def test_biased_assignment_trips_the_sample_ratio_check() -> None:
    # 50/50 configured; the treatment's first screen crashes for 10 % of its learners before the exposure is
    # sent. Pearson's statistic is then about N·f²/4 = 50 for N = 20,000 assigned and f = 0.1 lost, far past
    # the 10.8 of p = 0.001 (docs/experiments.md: a loss f is caught with 99 % power from N ≈ 126/f²).
    rng = np.random.default_rng(11)
    assigned = rng.binomial(20_000, 0.5, size=200)
    flagged = sum(
        bool(stats.sample_ratio_check([a, int(rng.binomial(20_000 - a, 0.9))], [50, 50]).mismatch)
        for a in assigned
    )
    assert flagged >= 195
    check = stats.sample_ratio_check([5_300, 4_700], [1, 1])
    assert check.status is Status.OK and check.mismatch and "untrustworthy" in check.reason
    observed, expected = np.array([5_300, 4_700]), np.array([5_000, 5_000])
    statistic = float(((observed - expected) ** 2 / expected).sum())  # Pearson's, by hand
    assert check.statistic == pytest.approx(statistic)
    assert check.p_value == pytest.approx(float(scipy.stats.chi2.sf(statistic, 1)))


def test_sample_ratio_check_false_alarms_are_rare_and_it_waits_for_100() -> None:
    rng = np.random.default_rng(12)
    weights = [1.0, 2.0, 1.0]
    counts = rng.multinomial(3_000, [0.25, 0.5, 0.25], size=1_000)
    alarms = sum(bool(stats.sample_ratio_check(list(c), weights).mismatch) for c in counts)
    assert rate_is_at_most(alarms, 1_000, stats.SRM_P_THRESHOLD)
    early = stats.sample_ratio_check([60, 30], [1, 1])
    assert early.status is Status.INSUFFICIENT_DATA and early.mismatch is None and early.p_value is None


def test_cuped_reduces_variance_and_stays_unbiased() -> None:
    rng = np.random.default_rng(3)
    experiments, per_arm, rho, effect = 1000, 300, 0.7, 0.2
    pre = rng.normal(0.0, 1.0, size=(experiments, 2, per_arm))  # pre-exposure minutes, standardised
    post = rho * pre + math.sqrt(1 - rho * rho) * rng.normal(0.0, 1.0, size=pre.shape)
    post[:, 1] += effect
    plain, adjusted, reductions, covered = [], [], [], 0
    for e in range(experiments):
        control, treatment = mean_sums(post[e, 0], pre[e, 0]), mean_sums(post[e, 1], pre[e, 1])
        result = stats.compare_means_cuped(control, treatment)
        assert result.cuped is not None and result.effect_interval is not None and result.effect is not None
        plain.append(stats.compare_means(control, treatment).effect)
        adjusted.append(result.effect)
        reductions.append(result.cuped.variance_reduction)
        covered += result.effect_interval.low <= effect <= result.effect_interval.high
    adjusted_effects, plain_effects = np.array(adjusted), np.array(plain, dtype=float)
    # Unbiased: the mean estimate is within 4 standard errors of the injected effect.
    assert abs(adjusted_effects.mean() - effect) < 4 * adjusted_effects.std(ddof=1) / math.sqrt(experiments)
    # The variance across experiments shrinks by rho² = 0.49, as the reported reduction says.
    empirical = 1 - adjusted_effects.var(ddof=1) / plain_effects.var(ddof=1)
    assert empirical == pytest.approx(rho * rho, abs=0.06)
    assert float(np.mean(reductions)) == pytest.approx(rho * rho, abs=0.02)
    assert rate_is_nominal(covered, experiments, 1 - ALPHA)
    print(f"\nCUPED rho=0.7: variance reduction measured {empirical:.3f}, reported {np.mean(reductions):.3f}")


# ------------------------------------------------------------------------- always-valid details


def test_mixing_variance_equal_to_the_mde_is_tightest_at_the_planned_size() -> None:
    """The default advice of docs/experiments.md: tau = MDE makes the sequence tightest near the planned n."""
    z = float(scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8))
    variance_at_plan = (1.0 / z) ** 2  # MDE = 1: V = (MDE / z)² at the planned size

    def half_width(tau2: float) -> float:
        result = sequential.mixture(0.0, variance_at_plan, tau2, ALPHA)
        assert result.interval is not None
        return result.interval.high

    best = min(half_width(t) for t in np.geomspace(0.01, 100, 4001))
    assert half_width(1.0) <= best * 1.001
    # At the planned size the sequence is about 1.55x the fixed-horizon interval: the price of peeking.
    assert half_width(1.0) / (1.96 * math.sqrt(variance_at_plan)) == pytest.approx(1.55, abs=0.02)


def test_watch_keeps_the_smallest_p_and_the_intersection() -> None:
    looks = [
        SequentialResult(Status.OK, "", 1.0, 0.2, stats.Interval(-1.0, 3.0), 1.0),
        SequentialResult(Status.SUPPRESSED, "fewer than 5 learners"),
        SequentialResult(Status.OK, "", 0.5, 0.4, stats.Interval(-0.5, 3.5), 1.0),
    ]
    watched = stats.watch(looks)
    assert watched.p_value == 0.2 and watched.interval == stats.Interval(-0.5, 3.0) and watched.effect == 0.5
    assert stats.watch([]).status is Status.INSUFFICIENT_DATA


# ----------------------------------------------------------------------------------- suppression


def test_fewer_than_k_learners_in_any_variant_gives_no_numbers() -> None:
    small, large = (
        MeanSums(4, 40.0, 500.0, Covariate(4.0, 8.0, 50.0)),
        MeanSums(900, 9e3, 2e5, Covariate(9e2, 2e3, 1e4)),
    )
    rate_small, rate_large = RateSums(4, 2), RateSums(900, 300)
    results: list[object] = [
        stats.compare_means(small, large),
        stats.compare_means(large, small),
        stats.compare_means_cuped(small, large),
        stats.compare_rates(rate_small, rate_large),
        stats.sequential_means(large, small),
        stats.sequential_rates(rate_large, rate_small),
        stats.sample_size_means(small, large, MinimumEffect(1.0)),
        stats.sample_size_rates(rate_large, rate_small, MinimumEffect(0.05)),
        stats.summarise_means(small),
        stats.summarise_rates(rate_small),
    ]
    for result in results:
        assert result.status is Status.SUPPRESSED, result  # type: ignore[attr-defined]
        assert all(value is None for value in numbers_of(result)), result
        assert "4" not in result.reason and "fewer than 5 learners" in result.reason  # type: ignore[attr-defined]
    # k is a parameter: with k = 4 the same variant shows its numbers.
    assert stats.compare_means(small, large, min_learners=4).status is Status.OK
    # The sample-ratio warning survives suppression (one bit), its numbers do not.
    srm = stats.sample_ratio_check([3, 400], [1, 1])
    assert srm.status is Status.SUPPRESSED and srm.mismatch is True
    assert srm.p_value is None and srm.statistic is None and srm.observed_shares is None


# ----------------------------------------------------------------------- robustness (hypothesis)


def check_result(result: object) -> None:
    """A result or a typed status: OK results are finite numbers; others carry no number at all."""
    status = result.status  # type: ignore[attr-defined]
    assert isinstance(status, Status)
    assert exact.is_finite(result), result
    if status is Status.OK:
        return
    assert result.reason, result  # type: ignore[attr-defined]
    if not isinstance(result, SampleRatioCheck):
        assert all(value is None for value in numbers_of(result)), result


finite = st.floats(allow_nan=False, allow_infinity=False)
magnitudes = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
counts = st.one_of(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 10**15))
covariates = st.one_of(st.none(), st.builds(Covariate, finite, magnitudes, finite))
any_mean_sums = st.builds(MeanSums, counts, finite, magnitudes, covariates)


@st.composite
def any_rate_sums(draw: st.DrawFn) -> RateSums:
    n = draw(counts)
    return RateSums(n, draw(st.integers(0, n)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_mean_sums, any_mean_sums, st.integers(0, 6))
def test_any_mean_sums_give_a_result_or_a_status(control: MeanSums, treatment: MeanSums, k: int) -> None:
    for result in (
        stats.compare_means(control, treatment, min_learners=k),
        stats.compare_means_cuped(control, treatment, min_learners=k),
        stats.sequential_means(control, treatment, min_learners=k),
        stats.sequential_means(control, treatment, min_learners=k, cuped=True, mixing_variance=1.0),
        stats.sample_size_means(control, treatment, MinimumEffect(0.05, relative=True), min_learners=k),
        stats.sample_size_means(control, treatment, MinimumEffect(1e-300), min_learners=k),
        stats.summarise_means(control, min_learners=k),
        stats.sample_ratio_check([control.n, treatment.n], [1.0, 3.0], min_learners=k),
    ):
        check_result(result)


@settings(max_examples=300, deadline=None)
@given(any_rate_sums(), any_rate_sums(), st.integers(0, 6))
def test_any_rate_sums_give_a_result_or_a_status(control: RateSums, treatment: RateSums, k: int) -> None:
    for result in (
        stats.compare_rates(control, treatment, min_learners=k),
        stats.sequential_rates(control, treatment, min_learners=k),
        stats.sample_size_rates(control, treatment, MinimumEffect(0.5, relative=True), min_learners=k),
        stats.summarise_rates(control, min_learners=k),
    ):
        check_result(result)


learner_totals = st.lists(st.integers(0, 10_000), min_size=0, max_size=60).map(
    lambda v: np.array(v, dtype=float)
)


# scipy warns of cancellation on nearly equal totals; the sums here are exact, and both still agree.
@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation")
@settings(max_examples=150, deadline=None)
@given(learner_totals, learner_totals, learner_totals, learner_totals)
def test_sums_of_real_learners_equal_scipy_or_say_why_not(
    control: FloatArray, treatment: FloatArray, pre_c: FloatArray, pre_t: FloatArray
) -> None:
    """Sums any learners could produce (zero variance, n = 0 or 1 included) are never 'invalid'; where scipy
    has an answer, it is the same answer (integer totals: the sums are exact)."""
    pre_c, pre_t = np.resize(pre_c, control.shape), np.resize(pre_t, treatment.shape)
    sums_c, sums_t = mean_sums(control, pre_c), mean_sums(treatment, pre_t)
    result = stats.compare_means(sums_c, sums_t, min_learners=0)
    for other in (result, stats.compare_means_cuped(sums_c, sums_t, min_learners=0)):
        check_result(other)
        assert other.status in {Status.OK, Status.INSUFFICIENT_DATA}
    defined = min(len(control), len(treatment)) >= 2 and (control.var() > 0 or treatment.var() > 0)
    assert (result.status is Status.OK) == defined
    if defined:
        reference = scipy.stats.ttest_ind(treatment, control, equal_var=False)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)
        assert result.degrees_of_freedom == pytest.approx(reference.df, rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e100, 1e100), min_size=2, max_size=40), st.floats(-1e100, 1e100))
def test_huge_and_constant_values_never_leak_nan(values: list[float], shift: float) -> None:
    control = np.array(values)
    treatment = np.full(len(values), shift)  # zero variance in the treatment
    for result in (
        stats.compare_means(mean_sums(control), mean_sums(treatment), min_learners=0),
        stats.sequential_means(mean_sums(control), mean_sums(treatment), min_learners=0),
        stats.compare_means(mean_sums(treatment), mean_sums(treatment), min_learners=0),
    ):
        check_result(result)


# ----------------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: MeanSums(-1, 0.0, 0.0), "MeanSums.n"),
        (lambda: MeanSums(3, math.nan, 0.0), "MeanSums.sum"),
        (lambda: MeanSums(3, 1.0, -1.0), "MeanSums.sum_squares"),
        (lambda: MeanSums(3, 1.0, 1.0, Covariate(1.0, math.inf, 0.0)), "Covariate.sum_squares"),
        (lambda: RateSums(3, 4), "RateSums.successes"),
        (lambda: RateSums(2.5, 1), "RateSums.n"),  # type: ignore[arg-type]
        (lambda: MinimumEffect(0.0), "MinimumEffect.value"),
        (lambda: stats.compare_means(MeanSums(9, 1.0, 1.0), MeanSums(9, 1.0, 1.0), alpha=1.5), "alpha"),
        (lambda: stats.compare_rates(RateSums(9, 1), RateSums(9, 1), min_learners=-1), "min_learners"),
        (lambda: stats.sample_ratio_check([10, 20], [1.0]), "weights"),
        (lambda: stats.sample_ratio_check([10, 20], [1.0, 0.0]), "weights"),
        (lambda: stats.sample_ratio_check([10, -2], [1.0, 1.0]), "counts.1"),
        (
            lambda: stats.sequential_rates(RateSums(9, 1), RateSums(9, 1), mixing_variance=0.0),
            "mixing_variance",
        ),
        (lambda: stats.required_sample_size(0.0, 1.0, 1.0), "effect"),
        (lambda: stats.required_sample_size(1.0, 1.0, 1.0, power=1.0), "power"),
    ],
)
def test_bad_parameters_name_the_field(build: object, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()  # type: ignore[operator]


def test_inconsistent_sums_are_reported_not_computed() -> None:
    # Σy² below (Σy)²/n: no learners have these sums (a rollup bug), so no numbers are made up from them.
    result = stats.compare_means(MeanSums(10, 100.0, 500.0), MeanSums(10, 100.0, 2_000.0))
    assert result.status is Status.INVALID_SUMS and result.effect is None
    bad_cross = MeanSums(10, 10.0, 20.0, Covariate(10.0, 20.0, 1_000.0))  # |cov| above sd·sd
    good = MeanSums(10, 10.0, 20.0, Covariate(10.0, 20.0, 15.0))
    assert stats.compare_means_cuped(bad_cross, good).status is Status.INVALID_SUMS


def test_result_types_are_plain_dataclasses() -> None:
    for kind in (Comparison, SequentialResult, SampleRatioCheck, SampleSize, VariantSummary):
        assert is_dataclass(kind)
