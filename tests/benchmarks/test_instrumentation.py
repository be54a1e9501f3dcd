"""The instrumentation benchmark runs (quick) and returns well-formed rows (no timing asserted)."""

from __future__ import annotations

import math

from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext
from studyin_analytics.benchmarks.instrumentation import instrumentation


async def test_quick_run_returns_rows_with_same_run_baselines(settings: Settings) -> None:
    assert REGISTRY["instrumentation"] is instrumentation
    with Progress(transient=True, disable=True) as progress:
        rows = await instrumentation(BenchContext(settings=settings, quick=True, progress=progress))
    names = [row.name for row in rows]
    assert "ASGI bare Starlette app" in names
    assert "ASGI StudyIn middleware, spans" in names
    assert "ASGI overhead: StudyIn metrics-only" in names
    assert any(name.startswith("tracker.material_view") for name in names)
    for row in rows:
        assert row.unit == "µs" and math.isfinite(row.value), row
        if row.name != "ASGI bare Starlette app":
            assert row.baseline is not None and row.baseline > 0 and row.baseline_name, row
    targets = {row.name: row for row in rows if row.target}
    assert set(targets) == {
        "ASGI StudyIn middleware, spans",
        "ASGI overhead: StudyIn with spans",
        "ASGI overhead: StudyIn metrics-only",
        "tracker.session (start + end)",
    }
    assert all(row.met is not None for row in targets.values())
