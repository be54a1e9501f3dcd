"""Builders of the experiment-statistics tests: the per-variant sums the rollups hold, exact binomial
checks of simulated rates, and simulated A/A studies looked at every day."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass

import numpy as np
import scipy.stats

from studyin_analytics.aggregator.experiments.statistics import (
    Comparison,
    Covariate,
    MeanSums,
    SequentialResult,
    Status,
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
