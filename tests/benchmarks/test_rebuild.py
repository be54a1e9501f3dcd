"""The rebuild benchmark in quick mode: it runs, rebuilds every stored event, has its same-run baseline."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import rebuild as rebuild_bench
from studyin_analytics.benchmarks import runner
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext


@pytest.mark.plain_variant  # `rollups rebuild` refuses the citus variant
async def test_quick_rebuild_bench_row(settings: Settings) -> None:
    ctx = BenchContext(
        settings=runner.bench_settings(settings),
        quick=True,
        progress=Progress(console=Console(file=io.StringIO())),
    )
    try:
        (row,) = await rebuild_bench.rebuild_bench(ctx)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert REGISTRY["rebuild"] is rebuild_bench.rebuild_bench
    assert row.unit == "events/s" and row.value > 0
    assert row.baseline is not None and row.baseline > 0
    assert row.target == ">= 0.5 x the plain re-aggregation"
