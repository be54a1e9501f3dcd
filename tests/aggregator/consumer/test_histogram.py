"""The latency histogram as pure functions (no servers): relative error, merging, quantiles."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer import histogram

pytestmark = pytest.mark.unit


@given(st.floats(min_value=2e-6, max_value=6e5, allow_nan=False))
def test_a_bucket_represents_its_values_within_alpha(value: float) -> None:
    represented = histogram.bucket_value(histogram.bucket(value))
    assert abs(represented - value) <= histogram.ALPHA * value * (1 + 1e-9)


def test_tiny_values_read_back_as_zero() -> None:
    assert histogram.bucket(0.0) == histogram.MIN_KEY == histogram.bucket(histogram.MIN_VALUE)
    assert histogram.bucket_value(histogram.MIN_KEY) == 0.0


def test_merged_histograms_equal_one_histogram_of_all_values() -> None:
    rng = random.Random(15)
    values = [rng.lognormvariate(3, 1.5) for _ in range(5_000)]
    whole: dict[str, int] = {}
    parts: list[dict[str, int]] = [{}, {}, {}]
    for i, value in enumerate(values):
        histogram.add(whole, value)
        histogram.add(parts[i % 3], value)
    assert histogram.merge(parts) == whole
    assert sum(whole.values()) == len(values)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_quantiles_within_alpha_of_the_lower_exact_quantile(q: float) -> None:
    rng = random.Random(int(q * 100))
    values = sorted(rng.lognormvariate(2, 1) for _ in range(2_001))
    counts: dict[str, int] = {}
    for value in values:
        histogram.add(counts, value)
    exact = values[math.floor(q * (len(values) - 1))]
    estimate = histogram.quantile(counts, q)
    assert estimate is not None
    assert abs(estimate - exact) <= histogram.ALPHA * exact * (1 + 1e-9)


def test_an_empty_histogram_has_no_quantile() -> None:
    assert histogram.quantile({}, 0.5) is None
