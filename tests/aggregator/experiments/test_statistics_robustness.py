"""The experiment statistics' safety: small-cell suppression, any sums give a result or a status
(hypothesis), never a NaN, bad parameters name their field, results are plain dataclasses."""

from __future__ import annotations

import math
from dataclasses import is_dataclass

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.experiments import exact
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
from tests.support.experiment_statistics import (
    FloatArray,
    mean_sums,
    numbers_of,
)

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
