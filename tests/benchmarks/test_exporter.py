"""The exporter benchmark runs (quick mode) and reports its rows against a same-run baseline."""

from __future__ import annotations

from rich.progress import Progress

from studyin_analytics.benchmarks import exporter as exporter_bench
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext
from studyin_analytics.instrumentation.settings import Settings


async def test_exporter_benchmark_quick(settings: Settings) -> None:
    assert REGISTRY["exporter"] is exporter_bench.exporter_cost
    with Progress(disable=True) as progress:
        ctx = BenchContext(settings=settings, quick=True, progress=progress)
        rows = await exporter_bench.exporter_cost(ctx)
    by_name = {row.name.split(",")[0]: row for row in rows}
    export = by_name["exporter cost per span"]
    assert export.unit == "µs" and export.value > 0
    assert export.baseline is not None and export.baseline > 0
    assert export.baseline_name is not None and "OTLP" in export.baseline_name
    assert export.met is not None and export.target == "<= 10 µs"
    encode = by_name["encode"]
    assert encode.baseline is not None and encode.ratio is not None
    assert any(row.unit == "spans/s" for row in rows)
    durable = by_name["export call per span with WAIT 1 (durable writes)"]
    assert (
        durable.unit == "µs" and durable.value > 0 and durable.baseline is not None and durable.baseline > 0
    )
    assert durable.baseline_name is not None and "without WAIT" in durable.baseline_name
