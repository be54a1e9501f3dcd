"""docs/experiments.md stays true: its worked examples and its table for τ are recomputed from the text.

Inputs are read from the page, every number of every result row is compared at the precision printed, and a
row the test does not know fails (so a new figure in the page cannot go unchecked).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from studyin_analytics.aggregator.experiments import sequential
from studyin_analytics.aggregator.experiments import statistics as stats
from studyin_analytics.aggregator.experiments.statistics import (
    Covariate,
    MeanSums,
    MinimumEffect,
    RateSums,
    Status,
)
from tests.support import ROOT

DOC = (ROOT / "docs" / "experiments.md").read_text()
NUMBER = re.compile(r"[−-]?\d+(?:\.\d+)?")


def tables(header: str) -> list[dict[str, list[str]]]:
    """Every table whose header row starts with ``| header |``: first cell -> the other cells."""
    found: list[dict[str, list[str]]] = []
    lines = DOC.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {header} |"):
            rows: dict[str, list[str]] = {}
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                cells = [cell.strip() for cell in row.strip("|").split("|")]
                rows[cells[0]] = cells[1:]
            found.append(rows)
    assert found, f"no table headed {header!r} in docs/experiments.md"
    return found


def printed(text: str) -> list[tuple[float, float]]:
    """The numbers in ``text`` with half a unit of their last printed digit as tolerance."""
    numbers = []
    for token in NUMBER.findall(text.replace(",", " ")):
        decimals = len(token.split(".")[1]) if "." in token else 0
        numbers.append((float(token.replace("−", "-")), 0.5 * 10.0**-decimals + 1e-12))
    return numbers


def assert_row(name: str, text: str, values: list[float]) -> None:
    numbers = printed(text)
    assert len(numbers) == len(values), f"{name}: the page prints {text!r}, expected {len(values)} numbers"
    for (number, tolerance), value in zip(numbers, values, strict=True):
        assert abs(number - value) <= tolerance, f"{name}: the page says {number}, the module gives {value}"


def worked_example_sums() -> tuple[MeanSums, MeanSums]:
    (inputs,) = tables("sum")[1:]  # the first "sum" table explains the fields
    columns = {name: [float(c) for c in cells] for name, cells in inputs.items()}
    variants = []
    for i in (0, 1):
        covariate = Covariate(columns["Σx"][i], columns["Σx²"][i], columns["Σxy"][i])
        variants.append(MeanSums(int(columns["n"][i]), columns["Σy"][i], columns["Σy²"][i], covariate))
    return variants[0], variants[1]


def known(*values: float | None) -> list[float]:
    assert all(value is not None for value in values), values
    return [float(value) for value in values if value is not None]


def test_the_worked_example_is_what_the_module_computes() -> None:
    control, treatment = worked_example_sums()
    welch, cuped = stats.compare_means(control, treatment), stats.compare_means_cuped(control, treatment)
    sequential = stats.sequential_means(control, treatment)
    sequential_cuped = stats.sequential_means(control, treatment, cuped=True)
    srm = stats.sample_ratio_check([control.n, treatment.n], [50, 50])
    size = stats.sample_size_means(control, treatment, MinimumEffect(0.05, relative=True))
    assert welch.effect_interval and welch.relative_lift_interval and welch.relative_lift is not None
    assert cuped.effect_interval and cuped.cuped and sequential.interval and sequential_cuped.interval
    assert size.progress is not None and size.power_now is not None and size.effect == pytest.approx(1.25)
    assert srm.status is Status.OK and not srm.mismatch
    expected = {
        "means, control and treatment": known(welch.control_mean, welch.treatment_mean),
        "Welch effect [95 % interval]": known(
            welch.effect, welch.effect_interval.low, welch.effect_interval.high
        ),
        "Welch p-value, degrees of freedom": known(welch.p_value, welch.degrees_of_freedom),
        "relative lift [95 % interval], in %": [
            100 * x
            for x in (
                welch.relative_lift,
                welch.relative_lift_interval.low,
                welch.relative_lift_interval.high,
            )
        ],
        "CUPED θ, variance reduction in %": known(cuped.cuped.theta, 100 * cuped.cuped.variance_reduction),
        "CUPED effect [95 % interval]": known(
            cuped.effect, cuped.effect_interval.low, cuped.effect_interval.high
        ),
        "CUPED p-value": known(cuped.p_value),
        "always-valid τ², p-value [confidence sequence]": known(
            sequential.mixing_variance, sequential.p_value, sequential.interval.low, sequential.interval.high
        ),
        "always-valid with CUPED: p-value [confidence sequence]": known(
            sequential_cuped.p_value, sequential_cuped.interval.low, sequential_cuped.interval.high
        ),
        "sample ratio χ², p-value": known(srm.statistic, srm.p_value),
        "learners per variant needed for +5 % (1.25 minutes)": known(size.required_control),
        "progress in %, power now in %": known(100 * size.progress, 100 * size.power_now),
    }
    results = tables("result")[0]
    assert set(results) == set(expected), "rows of the worked example and of this test differ"
    for name, (value,) in results.items():
        assert_row(name, value, expected[name])


def test_newcombes_published_example() -> None:
    match = re.search(r"(\d+)/(\d+) against (\d+)/(\d+)", DOC)
    assert match, "Newcombe's example (k/n against k/n) is gone from docs/experiments.md"
    k_t, n_t, k_c, n_c = (int(g) for g in match.groups())
    result = stats.compare_rates(RateSums(n_c, k_c), RateSums(n_t, k_t))
    assert result.status is Status.OK and result.effect_interval is not None
    expected = {
        "rate difference [95 % Newcombe interval]": known(
            result.effect, result.effect_interval.low, result.effect_interval.high
        ),
        "pooled z-test p-value": known(result.p_value),
    }
    results = tables("result")[1]
    assert set(results) == set(expected)
    for name, (value,) in results.items():
        assert_row(name, value, expected[name])


def test_the_width_table_for_tau() -> None:
    (table,) = tables("u = τ²/V")
    ratios = [float(u) for u in table["width / smallest width"]]
    header = next(line for line in DOC.splitlines() if line.startswith("| u = τ²/V |"))
    us = [float(u) for u in header.strip("|").split("|")[1:]]

    def width(u: float) -> float:  # V = 1, tau² = u
        interval = sequential.mixture(0.0, 1.0, u, 0.05).interval
        assert interval is not None
        return interval.high

    smallest = min(width(u) for u in np.geomspace(0.5, 100, 20001))
    for u, ratio in zip(us, ratios, strict=True):
        assert math.isclose(width(u) / smallest, ratio, abs_tol=0.005 + 1e-9), f"u = {u}"
