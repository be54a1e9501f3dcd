"""The experiments benchmark in quick mode: it runs, and its rows carry same-run baselines and targets."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import experiments as experiments_bench
from studyin_analytics.benchmarks import runner
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext


async def test_quick_experiments_bench_rows(settings: Settings) -> None:
    ctx = BenchContext(
        settings=runner.bench_settings(settings),
        quick=True,
        progress=Progress(console=Console(file=io.StringIO())),
    )
    try:
        rows = await experiments_bench.experiments(ctx)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert REGISTRY["experiments"] is experiments_bench.experiments
    by_name = {row.name: row for row in rows}
    endpoint = by_name["experiments analysis endpoint p95"]
    assert endpoint.unit == "ms" and endpoint.value > 0 and endpoint.baseline is not None
    assert endpoint.target == "<= 25 ms"
    for name in ("tracker.variant (already exposed)", "tracker.variant (first call: exposure)"):
        assert by_name[name].baseline is not None and by_name[name].value > 0
