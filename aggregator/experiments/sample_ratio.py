"""Experiment statistics: the sample-ratio mismatch check (Pearson's chi-square against the weights).

Part of :mod:`.statistics` (its public API); see docs/experiments.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import special

from .inputs import (
    DEFAULT_MIN_LEARNERS,
    SRM_MIN_EXPOSURES,
    SRM_P_THRESHOLD,
    Status,
    as_count,
    as_real,
    check_alpha,
    check_min_learners,
)
from .outputs import SampleRatioCheck


def _srm_inputs(counts: Sequence[int], weights: Sequence[float]) -> tuple[list[int], list[float]]:
    if len(counts) < 2 or len(counts) != len(weights):
        raise ValueError(
            f"counts, weights: need one count and one weight per variant, at least two variants "
            f"(got {len(counts)} counts, {len(weights)} weights)"
        )
    checked_counts = [as_count("counts", str(i), c) for i, c in enumerate(counts)]
    checked_weights = [as_real("weights", str(i), w) for i, w in enumerate(weights)]
    if any(w <= 0 for w in checked_weights):
        raise ValueError(f"weights: every weight must be > 0, got {list(weights)!r}")
    return checked_counts, checked_weights


def sample_ratio_check(
    counts: Sequence[int],
    weights: Sequence[float],
    *,
    min_exposures: int = SRM_MIN_EXPOSURES,
    threshold: float = SRM_P_THRESHOLD,
    min_learners: int = DEFAULT_MIN_LEARNERS,
) -> SampleRatioCheck:
    """Pearson's chi-square of exposed learners per variant against the configured weights.

    Below ``min_exposures`` in all, nothing is checked (``mismatch`` None). A variant under k learners hides
    the statistic, p-value and shares, but the mismatch flag stays: it is the warning that matters, one bit.
    """
    observed, configured = _srm_inputs(counts, weights)
    check_alpha("threshold", threshold)
    check_min_learners(min_learners)
    total_weight = math.fsum(configured)
    expected_shares = tuple(w / total_weight for w in configured)
    total = sum(observed)
    if total < min_exposures:
        reason = f"fewer than {min_exposures} exposed learners: the sample-ratio check has not started"
        return SampleRatioCheck(Status.INSUFFICIENT_DATA, reason, None, expected_shares)
    # Pearson's statistic and scipy's chi-square survival function: what scipy.stats.chisquare computes,
    # without its ~2 ms of argument handling per call (the analysis endpoint's largest cost).
    statistic = math.fsum(
        (n - total * share) ** 2 / (total * share) for n, share in zip(observed, expected_shares, strict=True)
    )
    p_value = float(special.chdtrc(len(observed) - 1, statistic))
    mismatch = p_value < threshold
    reason = (
        f"sample ratio mismatch (p < {threshold}): the split differs from the weights; results untrustworthy"
        if mismatch
        else ""
    )
    if any(n < min_learners for n in observed):
        hidden = f"fewer than {min_learners} learners in a variant: no numbers shown"
        return SampleRatioCheck(
            Status.SUPPRESSED, f"{reason}; {hidden}" if reason else hidden, mismatch, expected_shares
        )
    observed_shares = tuple(n / total for n in observed)
    return SampleRatioCheck(Status.OK, reason, mismatch, expected_shares, p_value, statistic, observed_shares)
