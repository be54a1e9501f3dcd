"""The sample-ratio check computes what ``scipy.stats.chisquare`` computes (statistic and p-value), for
any split and weights. Server-free."""

from __future__ import annotations

import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from studyin_analytics.aggregator.experiments.statistics import sample_ratio_check

pytestmark = pytest.mark.unit


@given(
    st.lists(st.tuples(st.integers(5, 100_000), st.integers(1, 10)), min_size=2, max_size=10),
)
def test_the_check_is_pearsons_chi_square(split: list[tuple[int, int]]) -> None:
    counts, weights = [c for c, _ in split], [float(w) for _, w in split]
    result = sample_ratio_check(counts, weights, min_exposures=0)
    total, weight = sum(counts), sum(weights)
    expected = scipy.stats.chisquare(counts, [total * w / weight for w in weights])
    assert result.statistic == pytest.approx(float(expected.statistic), rel=1e-9, abs=1e-9)
    assert result.p_value == pytest.approx(float(expected.pvalue), rel=1e-7, abs=1e-300)
