"""Experiment statistics from per-variant sums (pure: no I/O).

The exact rollups hold, per variant of an experiment, the number of exposed learners and, per metric, sums
over learners of their per-learner totals: ``sum`` and ``sum_squares`` (for CUPED also the pre-exposure
covariate's sum, sum of squares and the sum of metric x covariate products; for a rate metric the number of
learners with the outcome). Everything here is computed from those sums, never from per-learner rows:

- means: Welch's t-test and interval for the difference, the relative lift with a delta-method interval;
- rates: Newcombe's hybrid score interval for the difference, the pooled two-proportion z-test;
- CUPED: the same comparison on pre-exposure-adjusted means (theta pooled within variants, as in ANCOVA);
- sample-ratio mismatch: Pearson's chi-square against the configured weights;
- always-valid inference: the normal-mixture SPRT p-value and confidence sequence, safe to read every day;
- the sample size a minimum detectable effect needs, and how far the experiment has come.

A variant with fewer than ``min_learners`` learners yields no numbers (status ``suppressed``). Sums that allow
no answer give a status and a reason, never an exception or a NaN; invalid *parameters* (alpha, weights, a
negative count) raise ``ValueError`` naming the field. Formulas, assumptions and a worked example:
docs/experiments.md.

This module is the public API; the code lives by topic in :mod:`.inputs` (defaults, statuses, validated
sums), :mod:`.outputs` (results), :mod:`.exact` (exact arithmetic), :mod:`.comparisons`,
:mod:`.sample_ratio`, :mod:`.sequential` and :mod:`.sample_size`.
"""

from __future__ import annotations

from .comparisons import compare_means, compare_means_cuped, compare_rates, summarise_means, summarise_rates
from .inputs import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_LEARNERS,
    DEFAULT_MIXING_SD,
    DEFAULT_POWER,
    ROUNDING_TOLERANCE,
    SRM_MIN_EXPOSURES,
    SRM_P_THRESHOLD,
    Covariate,
    MeanSums,
    MinimumEffect,
    RateSums,
    Status,
)
from .outputs import (
    Comparison,
    Cuped,
    Interval,
    SampleRatioCheck,
    SampleSize,
    SequentialResult,
    VariantSummary,
)
from .sample_ratio import sample_ratio_check
from .sample_size import required_sample_size, sample_size_means, sample_size_rates
from .sequential import sequential_means, sequential_rates, watch

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_LEARNERS",
    "DEFAULT_MIXING_SD",
    "DEFAULT_POWER",
    "ROUNDING_TOLERANCE",
    "SRM_MIN_EXPOSURES",
    "SRM_P_THRESHOLD",
    "Comparison",
    "Covariate",
    "Cuped",
    "Interval",
    "MeanSums",
    "MinimumEffect",
    "RateSums",
    "SampleRatioCheck",
    "SampleSize",
    "SequentialResult",
    "Status",
    "VariantSummary",
    "compare_means",
    "compare_means_cuped",
    "compare_rates",
    "required_sample_size",
    "sample_ratio_check",
    "sample_size_means",
    "sample_size_rates",
    "sequential_means",
    "sequential_rates",
    "summarise_means",
    "summarise_rates",
    "watch",
]
