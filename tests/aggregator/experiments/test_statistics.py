"""The experiment statistics, checked against scipy/statsmodels (Welch, Newcombe, Wilson, CUPED as
ANCOVA, power), the sample ratio check and CUPED's variance reduction.

Server-free and fast: every simulation draws its learners with numpy in one go and feeds the module the same
per-variant sums the rollups will hold. Seeds are fixed; tolerances are binomial (a rate over E experiments is
compared with its nominal value by an exact binomial test), so a pass is not luck of one seed. The A/A,
power and always-valid checks are in test_statistics_sequential.py, suppression, robustness and bad
parameters in test_statistics_robustness.py; builders in tests/support/experiments.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from studyin_analytics.aggregator.experiments import comparisons
from studyin_analytics.aggregator.experiments import statistics as stats
from studyin_analytics.aggregator.experiments.statistics import (
    RateSums,
    Status,
)
from tests.support.experiment_statistics import (
    ALPHA,
    mean_sums,
    rate_is_at_most,
    rate_is_nominal,
)

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
