"""The analysis benchmark in quick mode: it runs, and its rows carry SQL baselines and targets."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import analysis as analysis_bench
from studyin_analytics.benchmarks import analysis_http, runner
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext


async def test_quick_analysis_bench_rows(settings: Settings) -> None:
    ctx = BenchContext(
        settings=runner.bench_settings(settings),
        quick=True,
        progress=Progress(console=Console(file=io.StringIO())),
    )
    try:
        rows = await analysis_bench.analysis(ctx)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert REGISTRY["analysis"] is analysis_bench.analysis
    by_name = {row.name: row for row in rows}
    five = by_name["analysis p95 5-step ordered funnel, 30 days"]
    assert five.unit == "ms" and five.value > 0 and five.baseline is not None and five.baseline > 0
    assert by_name["analysis p95 12-week retention, weekly cohorts"].baseline is not None
    assert by_name["analysis p95 20-step ordered funnel, 30 days"].target == "<= 2x the 5-step p95"
    assert by_name["analysis store load"].value > 0


async def test_quick_analysis_http_bench_rows(settings: Settings) -> None:
    """Saved and ad hoc analysis requests over HTTP on the api bench's data: every row has its target,
    the 5-step funnel and retention their SQL baseline."""
    ctx = BenchContext(
        settings=runner.bench_settings(settings),
        quick=True,
        progress=Progress(console=Console(file=io.StringIO())),
    )
    try:
        rows = await analysis_http.analysis_http(ctx)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert REGISTRY["analysis_http"] is analysis_http.analysis_http
    by_name = {row.name: row for row in rows}
    saved = by_name["analysis http p95 GET saved-funnels/{name} (warm)"]
    assert saved.target == "<= 25 ms" and saved.value > 0 and saved.baseline is not None
    assert by_name["analysis http p95 POST funnels 20 steps, 30 days"].target == "<= 2x the 5-step p95"
    for name in ("POST funnels 5 steps, 30 days", "POST retention 12 weekly cohorts"):
        row = by_name[f"analysis http p95 {name}"]
        assert row.value > 0 and row.baseline is not None and row.baseline > 0
        assert row.target == "<= 500 ms and >= 3x faster than SQL"
        assert row.baseline_name is not None and "SQL" in row.baseline_name


def test_the_generated_paths_drop_off_at_every_step() -> None:
    names, cols = analysis_bench.generate(50_000, 200)
    counts = [int((cols["type"] == names.index(step)).sum()) for step in analysis_bench.PATHWAY]
    assert counts[0] == counts[1] > counts[2] > counts[3] > counts[4] > 0
