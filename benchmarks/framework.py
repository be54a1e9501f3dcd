"""The contract between the bench runner and the benchmark modules.

A benchmark module in this package registers one or more async functions with
:func:`bench`; each takes a :class:`BenchContext` and returns :class:`Measurement` rows.
Every figure that matters is reported as a ratio against a baseline measured in the
same run (this machine is shared and noisy), as the median over repeats.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.progress import Progress

from ..instrumentation.settings import Settings

BENCH_MODULES: tuple[str, ...] = ("instrumentation", "exporter", "aggregator", "end_to_end", "api")
"""Modules of this package that define benchmarks, in the order they run (missing ones are absent)."""


@dataclass
class Measurement:
    """One row of the bench table."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    target: str | None = None
    met: bool | None = None
    notes: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


@dataclass
class BenchContext:
    """What a benchmark gets: servers, a quick flag and a progress display."""

    settings: Settings
    quick: bool
    progress: Progress
    repeats: int = 5

    def isolated_settings(self, name: str) -> Settings:
        """Settings with a fresh schema and key prefix, so benchmarks never see each other's data."""
        suffix = f"{name}_{uuid.uuid4().hex[:8]}"
        return self.settings.with_overrides(
            postgres_schema=f"bench_{suffix}",
            stream_prefix=f"bench:{suffix}",
            consumer_name=f"bench-{suffix}",
        )


BenchFunction = Callable[[BenchContext], Awaitable[list[Measurement]]]
REGISTRY: dict[str, BenchFunction] = {}


def bench(name: str) -> Callable[[BenchFunction], BenchFunction]:
    """Register a benchmark under ``name`` (what ``--only`` selects)."""

    def register(function: BenchFunction) -> BenchFunction:
        if name in REGISTRY:
            raise ValueError(f"benchmark {name!r} registered twice")
        REGISTRY[name] = function
        return function

    return register


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))
