"""The erasure benchmarks in quick mode: they run, and their rows carry same-run baselines and targets."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import erasure as erasure_bench
from studyin_analytics.benchmarks import runner
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext


async def test_quick_erasure_bench_rows(settings: Settings) -> None:
    ctx = BenchContext(
        settings=runner.bench_settings(settings),
        quick=True,
        progress=Progress(console=Console(file=io.StringIO())),
    )
    try:
        rows = [*await erasure_bench.erase_postgres(ctx), *await erasure_bench.tombstone_cost(ctx)]
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert REGISTRY["erasure_postgres"] is erasure_bench.erase_postgres
    assert REGISTRY["erasure_tombstone"] is erasure_bench.tombstone_cost
    for row in rows:
        assert row.value > 0 and row.baseline is not None and row.baseline > 0 and row.target
