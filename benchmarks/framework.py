"""The contract between the bench runner and the benchmark modules.

A benchmark module in this package registers one or more async functions with
:func:`bench`; each takes a :class:`BenchContext` and returns :class:`Measurement` rows.
Every figure that matters is reported as a ratio against a baseline measured in the
same run (this machine is shared and noisy), as the median over repeats.

What the runner guarantees to a benchmark:

* ``ctx.settings`` points at a reachable Redis and PostgreSQL (configured or embedded), with
  a pseudonymization key and a JWT secret set (throw-away ones unless configured);
* every :meth:`BenchContext.isolated_settings` gets its own schema and key prefix, and the
  runner drops that schema and deletes those keys after the benchmark returns (or fails);
* an exception is reported as an error row for that benchmark; the others still run.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID

from ..aggregator.cli.settings import Settings

BENCH_MODULES: tuple[str, ...] = (
    "instrumentation",
    "carriers",
    "exporter",
    "aggregator",
    "aggregator_columnar",
    "scaling",
    "end_to_end",
    "api",
    "lrs",
    "warehouse",
    "analysis",
    "analysis_http",
    "custom_events",
    "experiments",
    "erasure",
    "rebuild",
)
"""Modules of this package that define benchmarks, in the order they run (missing ones are absent)."""

_SAFE = re.compile(r"[^a-z0-9_]")
_SAFE_FILE = re.compile(r"[^a-z0-9_.-]")

THROUGHPUT_UNITS = ("/s",)
"""A unit ending like this is a throughput (charted with the throughputs)."""
LATENCY_UNITS = ("ns", "µs", "us", "ms", "s")
"""Units of latencies (charted with the latency percentiles)."""


@dataclass
class Measurement:
    """One row of the bench table.

    ``value`` and ``baseline`` are medians over repeats (``samples`` holds the repeats of
    ``value``); ``ratio`` is ``value / baseline``. ``target`` is a human-readable goal
    (e.g. ``">= 30000 events/s"``) and ``met`` whether ``value`` reaches it. ``error`` is set
    on the row the runner writes for a benchmark that raised. ``headline=False`` keeps a row
    out of the chart.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    target: str | None = None
    met: bool | None = None
    notes: str = ""
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    headline: bool = True
    bench: str | None = None
    """Name of the registered benchmark that produced the row (filled in by the runner)."""

    @property
    def ratio(self) -> float | None:
        if not self.baseline or math.isnan(self.value):
            return None
        return self.value / self.baseline

    @property
    def kind(self) -> str:
        """``throughput``, ``latency`` or ``other`` (from the unit), for the chart."""
        if self.unit.endswith(THROUGHPUT_UNITS):
            return "throughput"
        if self.unit in LATENCY_UNITS:
            return "latency"
        return "other"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        if isinstance(self.value, float) and math.isnan(self.value):
            data["value"] = None  # JSON has no NaN
        return data


@dataclass
class BenchContext:
    """What a benchmark gets: servers, a quick flag and a progress display."""

    settings: Settings
    quick: bool
    progress: Progress
    repeats: int = 5
    isolated: list[Settings] = field(default_factory=list)
    """Every settings object handed out by :meth:`isolated_settings` (the runner cleans them up)."""
    profile_dir: Path | None = None
    """Set by ``bench --profile DIR``: the runner profiles each benchmark's own thread, and a
    benchmark that starts processes or threads should profile them into :meth:`profile_path`."""

    def profile_path(self, name: str) -> Path | None:
        """Where to write the cProfile stats called ``name`` (``None`` when not profiling)."""
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return self.profile_dir / f"{_SAFE_FILE.sub('_', name.lower())}.prof"

    def isolated_settings(self, name: str) -> Settings:
        """Settings with a fresh schema and key prefix, so benchmarks never see each other's data.

        The runner drops the schema and deletes the keys when the benchmark is over.
        """
        suffix = f"{_SAFE.sub('_', name.lower())[:40]}_{uuid.uuid4().hex[:8]}"
        settings = self.settings.with_overrides(
            postgres_schema=f"bench_{suffix}",
            stream_prefix=f"bench:{suffix}",
            consumer_name=f"bench-{suffix}",
        )
        self.isolated.append(settings)
        return settings

    async def migrated_settings(self, name: str) -> Settings:
        """:meth:`isolated_settings` with the analytics schema migrated."""
        from ..aggregator.storage.schema import migrate

        settings = self.isolated_settings(name)
        await asyncio.to_thread(migrate, settings)
        return settings

    def scale(self, full: int, quick: int) -> int:
        """``quick`` in quick mode, else ``full`` (sizes of data sets, run lengths...)."""
        return quick if self.quick else full

    @property
    def repeat_count(self) -> int:
        """Repeats to take a median over: 1 in quick mode, else :attr:`repeats`."""
        return 1 if self.quick else self.repeats

    @asynccontextmanager
    async def task(self, description: str, total: float | None = None) -> AsyncIterator[TaskID]:
        """A progress bar line for the duration of the block (removed afterwards)."""
        task_id = self.progress.add_task(description, total=total)
        try:
            yield task_id
        finally:
            self.progress.remove_task(task_id)

    def advance(self, task_id: TaskID, amount: float = 1.0) -> None:
        self.progress.advance(task_id, amount)


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


def at_least(value: float, target: float, unit: str) -> tuple[str, bool]:
    """``(target text, met)`` for a higher-is-better target."""
    return f">= {target:g} {unit}", value >= target


def at_most(value: float, target: float, unit: str) -> tuple[str, bool]:
    """``(target text, met)`` for a lower-is-better target."""
    return f"<= {target:g} {unit}", value <= target


def summarize_profile(path: Path, limit: int = 30) -> Path:
    """Write ``<path>.txt``: the top functions of a cProfile file by own time and by cumulative time."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    out.write(f"== {path.name}: top {limit} by own time ==\n")
    stats.sort_stats("tottime").print_stats(limit)
    out.write(f"== {path.name}: top {limit} by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(limit)
    summary = path.with_suffix(".txt")
    summary.write_text(out.getvalue(), encoding="utf-8")
    return summary
