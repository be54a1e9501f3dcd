"""Daily looks (``aggregator/experiments/daily.py``): running totals of the per-day sums are the sums at
each day's end; each look equals the sequential result of those sums, and the watched result is their
running minimum p-value and intersection. Server-free."""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from studyin_analytics.aggregator.experiments import statistics as st
from studyin_analytics.aggregator.experiments.daily import daily_looks, running_totals
from studyin_analytics.aggregator.experiments.definitions import ExperimentDefinition
from tests.support.experiments import definition

pytestmark = pytest.mark.unit
DEFINITION = ExperimentDefinition.model_validate(definition("daily", primary_metric="xp"))


def _day_rows(rng: random.Random, days: int) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Day rows of learners joining each day with a per-learner xp total (treatment slightly higher)."""
    rows, learners = [], {"control": [], "treatment": []}
    for offset in range(days):
        day = date(2026, 11, 1) + timedelta(days=offset)
        for variant, lift in (("control", 0.0), ("treatment", 3.0)):
            ys = [max(0.0, rng.gauss(20 + lift, 8)) for _ in range(rng.randint(30, 60))]
            learners[variant] += ys
            rows.append(
                {
                    "variant": variant, "day": day, "n": len(ys), "successes": 0,
                    "sum": Decimal(str(sum(ys))), "sum_squares": Decimal(str(sum(y * y for y in ys))),
                    "covariate_sum": Decimal(0), "covariate_sum_squares": Decimal(0), "cross_sum": Decimal(0),
                }
            )  # fmt: skip
    return rows, learners


def test_running_totals_and_looks() -> None:
    rng = random.Random(3)
    rows, _ = _day_rows(rng, 8)
    totals = running_totals(rows, DEFINITION.names)
    assert [d for d, _ in totals] == sorted({r["day"] for r in rows})
    last = totals[-1][1]
    assert last["control"]["n"] == sum(r["n"] for r in rows if r["variant"] == "control")
    looks = daily_looks(DEFINITION, "xp", rows, k=5)
    assert len(looks) == 8
    p_values = []
    for (day, sums), look in zip(totals, looks, strict=True):
        control, treatment = (
            st.MeanSums(sums[v]["n"], float(sums[v]["sum"]), float(sums[v]["sum_squares"]))
            for v in ("control", "treatment")
        )
        expected = st.sequential_means(control, treatment, min_learners=5)
        (comparison,) = look["comparisons"]
        assert look["day"] == day.isoformat()
        assert comparison["sequential"]["p_value"] == pytest.approx(expected.p_value, rel=1e-9)
        p_values.append(expected.p_value)
        assert comparison["watched"]["p_value"] == pytest.approx(min(p_values), rel=1e-9)


def test_a_variant_under_k_learners_shows_nothing_that_day() -> None:
    rows = [
        {"variant": v, "day": date(2026, 11, 1), "n": n, "successes": 0, "sum": Decimal(n * 10),
         "sum_squares": Decimal(n * 120), "covariate_sum": 0, "covariate_sum_squares": 0, "cross_sum": 0}
        for v, n in (("control", 3), ("treatment", 40))
    ]  # fmt: skip
    (look,) = daily_looks(DEFINITION, "xp", rows, k=5)
    assert look["learners"] == {"control": None, "treatment": 40}
    assert look["comparisons"][0]["sequential"]["status"] == "suppressed"
    assert look["comparisons"][0]["sequential"]["p_value"] is None
