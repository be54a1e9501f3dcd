"""Experiment statistics: the defaults, the status of a result, the validated per-variant sums.

Part of :mod:`.statistics` (its public API); see docs/experiments.md.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.8
DEFAULT_MIN_LEARNERS = 5
"""k of small-cell suppression (the default of issue 18): a variant with fewer learners shows no numbers."""
SRM_MIN_EXPOSURES = 100
"""The sample-ratio check waits for this many exposed learners in all variants together (as PostHog does)."""
SRM_P_THRESHOLD = 0.001
"""A sample-ratio p-value below this marks the experiment untrustworthy (docs/experiments.md: why so low)."""
DEFAULT_MIXING_SD = 0.1
"""Default mixing standard deviation tau of the always-valid test, in per-learner standard deviations."""
ROUNDING_TOLERANCE = 1e-9
"""Float sums may leave a centred sum of squares a hair below zero; beyond this relative slack it is a bug."""

TOLERANCE = Fraction(ROUNDING_TOLERANCE)  # exact, so comparisons with huge fractions never go through float


class Status(StrEnum):
    OK = "ok"
    SUPPRESSED = "suppressed"
    """A variant has fewer than k learners: no numbers (privacy), whatever the rest says."""
    INSUFFICIENT_DATA = "insufficient_data"
    """Too few learners, or no variation yet, for this computation."""
    INVALID_SUMS = "invalid_sums"
    """Sums no set of learners could produce (a rollup bug), or beyond floating-point range."""


def as_count(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{owner}.{name}: must be a whole number >= 0, got {value!r}")
    return int(value)


def as_real(owner: str, name: str, value: object) -> float:
    """A finite number; integers stay exact (the sums are turned into fractions, not floats)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}.{name}: must be a number, got {value!r}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"{owner}.{name}: must be finite and within floating-point range, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


@dataclass(frozen=True, slots=True)
class Covariate:
    """Sums over a variant's learners of a pre-exposure covariate x (CUPED): Σx, Σx², Σ(y·x)."""

    sum: float
    sum_squares: float
    cross_sum: float

    def __post_init__(self) -> None:
        for name in ("sum", "sum_squares", "cross_sum"):
            object.__setattr__(self, name, as_real("Covariate", name, getattr(self, name)))
        if self.sum_squares < 0:
            raise ValueError(f"Covariate.sum_squares: must be >= 0, got {self.sum_squares!r}")


@dataclass(frozen=True, slots=True)
class MeanSums:
    """One variant, one metric: n learners, Σy and Σy² of their per-learner totals y (and CUPED's sums)."""

    n: int
    sum: float
    sum_squares: float
    covariate: Covariate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", as_count("MeanSums", "n", self.n))
        for name in ("sum", "sum_squares"):
            object.__setattr__(self, name, as_real("MeanSums", name, getattr(self, name)))
        if self.sum_squares < 0:
            raise ValueError(f"MeanSums.sum_squares: must be >= 0, got {self.sum_squares!r}")


@dataclass(frozen=True, slots=True)
class RateSums:
    """One variant, one rate metric: n learners, of whom ``successes`` had the outcome."""

    n: int
    successes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", as_count("RateSums", "n", self.n))
        object.__setattr__(self, "successes", as_count("RateSums", "successes", self.successes))
        if self.successes > self.n:
            raise ValueError(f"RateSums.successes: must be <= n ({self.n}), got {self.successes}")


@dataclass(frozen=True, slots=True)
class MinimumEffect:
    """The smallest effect worth detecting: absolute (metric units) or relative to the control mean."""

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        value = as_real("MinimumEffect", "value", self.value)
        if value <= 0:
            raise ValueError(f"MinimumEffect.value: must be > 0, got {value!r}")
        object.__setattr__(self, "value", float(value))


def check_alpha(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and 0.0 < value < 1.0):
        raise ValueError(f"{name}: must be strictly between 0 and 1, got {value!r}")


def check_min_learners(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"min_learners: must be a whole number >= 0, got {value!r}")
