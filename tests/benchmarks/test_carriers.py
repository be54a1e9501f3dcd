"""The carriers benchmark runs (quick): a row per case against a same-run baseline (no timing asserted)."""

from __future__ import annotations

import math

from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks.carriers import carriers
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext


async def test_quick_run_returns_a_row_per_carrier_case(settings: Settings) -> None:
    assert REGISTRY["carriers"] is carriers
    with Progress(transient=True, disable=True) as progress:
        rows = await carriers(BenchContext(settings=settings, quick=True, progress=progress))
    assert len(rows) == 5
    assert any("log carrier, no span" in row.name for row in rows)
    for row in rows:
        assert row.unit == "µs" and math.isfinite(row.value) and row.value > 0, row
        assert row.baseline and row.baseline_name == "span.add_event, same attributes", row
