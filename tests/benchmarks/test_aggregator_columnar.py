"""The columnar prototype's benchmark in quick mode: it runs, and its rows carry same-run baselines."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import aggregator_columnar
from studyin_analytics.benchmarks.framework import REGISTRY, BenchContext

pytestmark = pytest.mark.unit


async def test_quick_columnar_bench_rows(offline_settings: Settings) -> None:
    """Server-free: the bench reads no server (its workload is built and measured in memory)."""
    ctx = BenchContext(
        settings=offline_settings, quick=True, progress=Progress(console=Console(file=io.StringIO()))
    )
    rows = await aggregator_columnar.aggregator_columnar(ctx)
    assert REGISTRY["aggregator_columnar"] is aggregator_columnar.aggregator_columnar
    decode = [row for row in rows if row.name.startswith("columnar decode+map+count, batches")]
    assert len(decode) == len(aggregator_columnar.BATCH_SPANS)
    assert any("group-bys per read" in row.name for row in rows)  # exporter-sized entries, per read
    for row in rows:
        assert row.value > 0, row.name
        if row.unit in ("us/event", "us/span"):
            assert row.baseline is not None and row.baseline > 0, row.name
