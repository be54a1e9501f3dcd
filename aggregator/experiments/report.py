"""One experiment version's analysis from its per-variant sums (pure: the API reads the sums, this computes).

For every metric of the definition (primary first, then guardrails): each variant's row (learners, mean or
rate, standard deviation), and each treatment against the control (the first variant): effect and relative
lift with intervals (Welch, or Newcombe for rates), CUPED for means when a pre-exposure covariate varies,
the always-valid sequential p-value and confidence sequence (safe to read daily), and for the primary
metric the sample size so far against the size the minimum effect needs. The sample-ratio check covers
the whole experiment: a mismatch marks every result untrustworthy. A variant with fewer than k learners
shows no numbers (:mod:`.statistics` suppresses; learner counts under k are withheld here too).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

from . import statistics as st
from .definitions import ExperimentDefinition, metric_of

__all__ = ["SumsRow", "analyse", "as_number"]

SumsRow = Mapping[str, Any]
"""One row of ``experiment_variant_sums``: n, successes, sum, sum_squares, covariate_sum, ..."""


def as_number(value: Any, scale: int = 1) -> int | float:
    """An exact count stays an int; a numeric sum becomes the nearest float (scaled down by ``scale``)."""
    if isinstance(value, Decimal):
        value = Fraction(value)
    if isinstance(value, numbers.Integral) and scale == 1:
        return int(value)
    return float(Fraction(value) / scale) if isinstance(value, numbers.Rational) else float(value) / scale


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def mean_sums(row: SumsRow | None, scale: int, with_covariate: bool) -> st.MeanSums:
    if row is None:
        return st.MeanSums(0, 0, 0)
    covariate = None
    if with_covariate:
        covariate = st.Covariate(
            as_number(row["covariate_sum"], scale),
            as_number(row["covariate_sum_squares"], scale * scale),
            as_number(row["cross_sum"], scale * scale),
        )
    return st.MeanSums(
        int(row["n"]), as_number(row["sum"], scale), as_number(row["sum_squares"], scale * scale), covariate
    )


def rate_sums(row: SumsRow | None) -> st.RateSums:
    return st.RateSums(0, 0) if row is None else st.RateSums(int(row["n"]), int(row["successes"]))


def covariate_varies(rows: list[SumsRow | None]) -> bool:
    total = sum(int(r["n"]) for r in rows if r is not None)
    if total < 2:
        return False
    s = sum(Fraction(r["covariate_sum"]) for r in rows if r is not None)
    q = sum(Fraction(r["covariate_sum_squares"]) for r in rows if r is not None)
    return total * q - s * s > 0


def _rate_comparisons(
    definition: ExperimentDefinition, metric: str, raw: list[SumsRow | None], k: int, alpha: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names, weights = definition.names, definition.weights
    minimum = st.MinimumEffect(definition.minimum_effect, relative=True)
    sums = [rate_sums(r) for r in raw]
    rows = [
        {"variant": n, **plain(st.summarise_rates(s, min_learners=k))}
        for n, s in zip(names, sums, strict=True)
    ]
    comparisons = []
    for index in range(1, len(names)):
        control, treatment = sums[0], sums[index]
        entry = {
            "variant": names[index],
            "comparison": plain(st.compare_rates(control, treatment, alpha=alpha, min_learners=k)),
            "sequential": plain(st.sequential_rates(control, treatment, alpha=alpha, min_learners=k)),
        }
        if metric == definition.primary_metric:
            pair = (float(weights[0]), float(weights[index]))
            size = st.sample_size_rates(
                control, treatment, minimum, weights=pair, alpha=alpha, min_learners=k
            )
            entry["sample_size"] = plain(size)
        comparisons.append(entry)
    return rows, comparisons


def _mean_comparisons(
    definition: ExperimentDefinition, metric: str, raw: list[SumsRow | None], k: int, alpha: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names, weights = definition.names, definition.weights
    minimum = st.MinimumEffect(definition.minimum_effect, relative=True)
    cuped = covariate_varies(raw)
    sums = [mean_sums(r, metric_of(metric).scale, cuped) for r in raw]
    rows = [
        {"variant": n, **plain(st.summarise_means(s, min_learners=k))}
        for n, s in zip(names, sums, strict=True)
    ]
    comparisons = []
    for index in range(1, len(names)):
        control, treatment = sums[0], sums[index]
        compare = st.compare_means_cuped if cuped else st.compare_means
        entry = {
            "variant": names[index],
            "comparison": plain(compare(control, treatment, alpha=alpha, min_learners=k)),
            "sequential": plain(
                st.sequential_means(control, treatment, alpha=alpha, cuped=cuped, min_learners=k)
            ),
        }
        if metric == definition.primary_metric:
            pair = (float(weights[0]), float(weights[index]))
            size = st.sample_size_means(
                control, treatment, minimum, weights=pair, alpha=alpha, min_learners=k
            )
            entry["sample_size"] = plain(size)
        comparisons.append(entry)
    return rows, comparisons


def _metric(
    definition: ExperimentDefinition,
    metric: str,
    rows: Mapping[tuple[str, str], SumsRow],
    k: int,
    alpha: float,
) -> dict[str, Any]:
    info = metric_of(metric)
    raw = [rows.get((name, metric)) for name in definition.names]
    build = _rate_comparisons if info.kind == "rate" else _mean_comparisons
    variants, comparisons = build(definition, metric, raw, k, alpha)
    return {
        "metric": metric,
        "label": info.label,
        "kind": info.kind,
        "unit": info.unit,
        "primary": metric == definition.primary_metric,
        "variants": variants,
        "comparisons": comparisons,
    }


def analyse(
    definition: ExperimentDefinition,
    exposed: Mapping[str, int],
    rows: Mapping[tuple[str, str], SumsRow],
    *,
    k: int = st.DEFAULT_MIN_LEARNERS,
    alpha: float = st.DEFAULT_ALPHA,
) -> dict[str, Any]:
    """The analysis as plain JSON data: ``exposed`` learners per variant, ``rows`` by (variant, metric)."""
    names = definition.names
    counts = [int(exposed.get(name, 0)) for name in names]
    srm = st.sample_ratio_check(counts, [float(w) for w in definition.weights], min_learners=k)
    return {
        "variants": [
            {"variant": n, "weight": w, "control": i == 0, "learners": c if not (0 < c < k) else None}
            for i, (n, w, c) in enumerate(zip(names, definition.weights, counts, strict=True))
        ],
        "suppressed": any(0 < c < k for c in counts) or not all(counts),
        "min_learners": k,
        "alpha": alpha,
        "sample_ratio": plain(srm),
        "trustworthy": srm.mismatch is not True,
        "metrics": [_metric(definition, metric, rows, k, alpha) for metric in definition.metrics],
    }
