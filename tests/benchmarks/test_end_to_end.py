"""The end-to-end measure in quick mode: real exporter, aggregator processes, exact totals."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.simulation import Ledger, new_user_ids
from studyin_analytics.benchmarks import end_to_end, runner
from studyin_analytics.benchmarks.framework import BenchContext


def _context(settings: Settings) -> BenchContext:
    progress = Progress(console=Console(file=io.StringIO()))
    return BenchContext(settings=runner.bench_settings(settings), quick=True, progress=progress)


async def test_quick_run_returns_rows_with_exact_totals(settings: Settings) -> None:
    ctx = _context(settings)
    try:
        rows = await end_to_end.end_to_end(ctx)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    by_name = {row.name: row for row in rows}
    main = by_name["end_to_end throughput"]
    assert main.error is None, main.error
    assert "all equal" in main.notes
    assert main.value > 0 and main.baseline is not None and main.baseline > 0
    assert main.unit == "events/s" and main.target is not None and main.met is not None
    assert by_name["end_to_end requests"].value > 0
    assert not any("bulk sync" in name for name in by_name)  # the full run only
    row = by_name["end_to_end throughput, log records everywhere"]  # the same traffic, the same baseline
    assert row.error is None and "all equal" in row.notes, row
    assert row.value > 0 and row.baseline == main.baseline
    assert by_name["end_to_end CPU per event, log records everywhere"].value > 0
    assert "end_to_end throughput, log carrier" not in by_name  # the full run only


async def test_bulk_sync_traffic_totals(settings: Settings) -> None:
    ctx = _context(settings)
    traffic = end_to_end.bulk_traffic(True)
    try:
        run = await end_to_end._pipeline(ctx, new_user_ids(30), traffic, lambda done: None)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert run.errors == []
    assert run.ledger.total_events / run.ledger.requests > 10  # event-dense requests


async def test_a_totals_mismatch_is_reported(settings: Settings) -> None:
    ctx = _context(settings)
    try:
        traffic = end_to_end.Traffic("test", students=20, sessions=1, flashcards=10)
        run = await end_to_end._pipeline(ctx, new_user_ids(traffic.students), traffic, lambda done: None)
        assert run.errors == []
        assert run.ledger.events["api_request"] == run.ledger.requests
        tampered = Ledger()
        tampered.merge(run.ledger)
        tampered.count("material_view")
        user = next(iter(tampered.sessions))
        tampered.add(tampered.xp, user, 1)
        problems = await end_to_end.check_totals(ctx.isolated[-1], tampered)
    finally:
        await runner.cleanup(ctx.settings, ctx.isolated)
    assert any(p.startswith("material_view:") for p in problems)
    assert any("1 of 20 students" in p for p in problems)
