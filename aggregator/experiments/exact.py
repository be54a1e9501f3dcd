"""Experiment statistics: exact arithmetic on the sums (fractions), moments, and turning gaps into statuses.

Part of :mod:`.statistics` (its public API); see docs/experiments.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from fractions import Fraction
from typing import TypeVar

from .inputs import TOLERANCE, MeanSums, RateSums, Status

T = TypeVar("T")


class Unavailable(Exception):
    """This computation has no answer for these sums; becomes a status, never leaves a public function."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Moments:
    n: int
    mean: float
    variance: float
    """Sample variance (n - 1) of the per-learner values."""

    @property
    def variance_of_mean(self) -> float:
        return self.variance / self.n


def comoment(n: int, sum_a: float, sum_b: float, sum_ab: float) -> Fraction:
    """n·Σab − Σa·Σb computed exactly: n times the centred cross sum, free of cancellation error."""
    return n * Fraction(sum_ab) - Fraction(sum_a) * Fraction(sum_b)


def non_negative(value: Fraction, scale: Fraction, what: str) -> Fraction:
    if value >= 0:
        return value
    if -value <= TOLERANCE * abs(scale):
        return Fraction(0)
    raise Unavailable(Status.INVALID_SUMS, f"{what}: no set of learners has these sums")


def as_float(value: Fraction | float, what: str) -> float:
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise Unavailable(Status.INVALID_SUMS, f"{what} is beyond floating-point range")
    return result


def suppress(min_learners: int, **learners: int) -> None:
    small = [label for label, n in learners.items() if n < min_learners]
    if small:
        raise Unavailable(
            Status.SUPPRESSED,
            f"fewer than {min_learners} learners in {' and '.join(small)}: no numbers shown",
        )


def is_finite(value: object) -> bool:
    """No NaN or infinity anywhere in a result (dataclasses, tuples and floats, recursively)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(is_finite(item) for item in value)
    if is_dataclass(value):
        return all(is_finite(getattr(value, f.name)) for f in fields(value))
    return True


def guarded(compute: Callable[[], T], unavailable: Callable[[Status, str], T]) -> T:
    """Run ``compute``; a missing answer or a non-finite number becomes ``unavailable(status, reason)``."""
    try:
        result = compute()
    except Unavailable as gap:
        return unavailable(gap.status, gap.reason)
    except OverflowError:
        return unavailable(Status.INVALID_SUMS, "numbers beyond floating-point range")
    if not is_finite(result):
        return unavailable(Status.INVALID_SUMS, "numbers beyond floating-point range")
    return result


@functools.lru_cache(maxsize=1024)  # one analysis asks for the same variant's moments ~6 times (exact: slow)
def variant_moments(sums: MeanSums, label: str) -> Moments:
    if sums.n < 2:
        raise Unavailable(Status.INSUFFICIENT_DATA, f"{label} needs at least 2 learners for a variance")
    centred = non_negative(
        comoment(sums.n, sums.sum, sums.sum, sums.sum_squares),
        sums.n * Fraction(sums.sum_squares),
        f"{label} sum of squares",
    )
    variance = as_float(centred / (sums.n * (sums.n - 1)), f"{label} variance")
    return Moments(sums.n, as_float(Fraction(sums.sum) / sums.n, f"{label} mean"), variance)


def rate_moments(sums: RateSums, label: str) -> Moments:
    """A rate as the mean of 0/1 outcomes; variance p(1 − p), the normal approximation's."""
    if sums.n < 1:
        raise Unavailable(Status.INSUFFICIENT_DATA, f"{label} has no learners yet")
    rate = sums.successes / sums.n
    return Moments(sums.n, rate, rate * (1.0 - rate))
