"""The custom-events benchmark in quick mode: it runs within seconds, its rows carry same-run baselines."""

from __future__ import annotations

import io
import time

from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import custom_events as bench
from studyin_analytics.benchmarks import runner
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext


async def test_quick_custom_events_bench_rows(settings: Settings) -> None:
    ctx = BenchContext(
        settings=runner.bench_settings(settings),
        quick=True,
        progress=Progress(console=Console(file=io.StringIO())),
    )
    started = time.monotonic()
    try:
        rows = await bench.custom_events(ctx)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert REGISTRY["custom_events"] is bench.custom_events
    validation, throughput = rows
    assert validation.unit == "µs" and validation.baseline is not None and validation.value > 0
    assert throughput.unit == "events/s" and throughput.baseline is not None and throughput.value > 0
    assert "custom" in throughput.notes and validation.met is not None and throughput.met is not None
    print(f"{validation.ratio=:.2f} {throughput.ratio=:.2f} in {time.monotonic() - started:.1f}s")
