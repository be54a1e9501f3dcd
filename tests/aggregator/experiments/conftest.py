"""Fixtures of the experiment-statistics tests."""

from __future__ import annotations

import pytest

from studyin_analytics.aggregator.experiments import statistics as stats
from tests.support.experiment_statistics import (
    AA_DAYS,
    AA_EXPERIMENTS,
    ALPHA,
    daily_looks,
    p_value,
    simulate_study_minutes,
)


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
