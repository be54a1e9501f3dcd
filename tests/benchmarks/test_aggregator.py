"""The aggregator benchmark in quick mode: it runs, and its rows carry baselines and targets."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import aggregator as agg_bench
from studyin_analytics.benchmarks import runner
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext


async def test_quick_aggregator_bench_rows(settings: Settings) -> None:
    ctx = BenchContext(
        settings=runner.bench_settings(settings),
        quick=True,
        progress=Progress(console=Console(file=io.StringIO())),
    )
    try:
        rows = await agg_bench.aggregator_bench(ctx)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert REGISTRY["aggregator"] is agg_bench.aggregator_bench
    by_name = {row.name.split(" (")[0]: row for row in rows}
    throughput = by_name["aggregator throughput"]
    assert throughput.unit == "events/s" and throughput.value > 0
    assert throughput.baseline is not None and throughput.baseline > 0  # the bare COPY, same run
    assert throughput.met is not None and throughput.target is not None
    copy = by_name["raw COPY built per column"]  # against asyncpg's per-row COPY, same rows
    assert copy.unit == "us/row" and copy.value > 0 and copy.baseline is not None and copy.baseline > 0
    p50, p99 = by_name["aggregator freshness p50"], by_name["aggregator freshness p99"]
    assert 0 < p50.value <= p99.value
    memory = by_name["aggregator peak RSS under sustained load"]
    assert memory.unit == "MB" and memory.baseline is not None and memory.value >= memory.baseline * 0.5
    assert "exit code 0" in memory.notes  # the aggregator stopped cleanly on SIGTERM
