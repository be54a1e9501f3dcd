"""The experiment statistics over hundreds of simulated experiments: A/A false positives when read once
or daily (fixed horizon and always-valid), the power of an injected effect, and always-valid details.

Seeds are fixed; tolerances are binomial, so a pass is not luck of one seed (see test_statistics.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.power import NormalIndPower

from studyin_analytics.aggregator.experiments import sequential
from studyin_analytics.aggregator.experiments import statistics as stats
from studyin_analytics.aggregator.experiments.statistics import (
    MeanSums,
    MinimumEffect,
    RateSums,
    SequentialResult,
    Status,
)
from tests.support.experiment_statistics import (
    AA_EXPERIMENTS,
    ALPHA,
    FloatArray,
    mean_sums,
    p_value,
    rate_is_at_most,
    rate_is_nominal,
)

# ------------------------------------------------------------------------------- A/A and peeking


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
