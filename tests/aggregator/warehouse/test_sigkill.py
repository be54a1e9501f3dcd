"""SIGKILL of a real exporter process at random moments while events keep arriving: after a
restart the export equals PostgreSQL row for row, with neither a duplicate nor a gap."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from studyin_analytics.aggregator.warehouse.iceberg import RANGE_PROPERTY, open_catalog
from studyin_analytics.aggregator.warehouse.runner import Exporter
from studyin_analytics.aggregator.warehouse.settings import catalog_url
from studyin_analytics.aggregator.warehouse.sources import SOURCES
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.workload import build

from .conftest import Warehouse
from .test_export import assert_equal_to_postgres, ingest

KILLS = 4


def _start(wh: Warehouse, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **wh.env(), "STUDYIN_ANALYTICS_LOG_LEVEL": "INFO"}
    cli = str(Path(sys.executable).with_name("studyin-analytics"))
    with log.open("ab") as out:
        return subprocess.Popen(
            [cli, "export", "--follow", "--interval", "0.05"], env=env, stdout=out, stderr=out
        )


def _wait_for_steps(log: Path, seen: int, timeout_s: float = 120.0) -> int:
    """Until the exporter has begun a step after ``seen`` steps in the log (start-up is slow)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        steps = log.read_text(errors="replace").count("export step up to watermark")
        if steps > seen:
            return steps
        time.sleep(0.05)
    raise AssertionError(f"the exporter began no step within {timeout_s} s: {log.read_text()[-2000:]}")


def _caught_up(wh: Warehouse, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    with Exporter(wh.settings, wh.export, list(SOURCES), dry_run=True) as status:
        while time.monotonic() < deadline:
            if all(v == 0 for lag in status.lag().values() for v in lag.values()):
                return
            time.sleep(0.5)
    raise AssertionError("the exporter did not catch up after ingestion stopped")


def _contiguous(ranges: list[tuple[int, int]], what: str) -> None:
    ranges.sort()
    for (lo, hi), (next_lo, _) in itertools.pairwise(ranges):
        assert hi == next_lo, f"{what}: steps {lo}-{hi} and {next_lo}-... overlap or leave a gap"


@pytest.mark.slow
def test_sigkill_at_random_moments_with_live_ingestion(warehouse: Warehouse) -> None:
    wh = warehouse
    wh.export = wh.export.model_copy(update={"chunk_rows": 1000})
    rng = random.Random(int(os.environ.get("STUDYIN_TEST_SEED", time.time())))
    pseudonymizer = Pseudonymizer.from_settings(wh.settings)
    ingest(wh.settings, build(pseudonymizer, users=40, seed=100))
    failures: list[BaseException] = []

    def live() -> None:
        try:
            for wave in range(8):
                # Every other wave is late: events of yesterday, a day exported already.
                ingest(
                    wh.settings,
                    build(pseudonymizer, users=12, seed=101 + wave, hours_ago=3 + 24 * (wave % 2)),
                )
                time.sleep(rng.uniform(0.1, 0.6))
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=live)
    log = wh.root / "exporter.log"
    process = _start(wh, log)
    writer.start()
    mid_step = 0
    steps = 0
    try:
        for _ in range(KILLS):
            steps = _wait_for_steps(log, steps)
            time.sleep(rng.uniform(0.0, 3.0))  # somewhere in a step, or in the pause between two
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
            staging = list(Path(wh.export.parquet_dir).glob("*/_staging/*"))
            mid_step += bool(staging)
            process = _start(wh, log)
        writer.join(timeout=300)
        _caught_up(wh)  # the last exporter, never killed, catches up by itself
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert not failures, failures
    assert not writer.is_alive()
    assert_equal_to_postgres(wh)

    # The committed steps form one chain per source and target: no overlap, no gap.
    for base in Path(wh.export.parquet_dir).iterdir():
        ranges = [tuple(json.loads(p.read_text())["range"]) for p in (base / "_manifests").glob("*.json")]
        _contiguous([(int(a), int(b)) for a, b in ranges], f"parquet {base.name}")
        assert not list(base.glob("_staging/*"))
    catalog = open_catalog(wh.export.catalog_name, catalog_url(wh.settings, wh.export), wh.export.warehouse)
    for identifier in catalog.list_tables(wh.export.namespace):  # type: ignore[attr-defined]
        table = catalog.load_table(identifier)  # type: ignore[attr-defined]
        steps = {s.summary.additional_properties.get(RANGE_PROPERTY) for s in table.snapshots()}
        _contiguous([tuple(int(x) for x in r.split("-")) for r in steps if r], f"iceberg {identifier}")
    exported = log.read_text().count("exported ")
    assert exported > 0, "the killed exporters never exported anything"
    print(f"{KILLS} kills, {mid_step} with a Parquet step staged but not committed, {exported} commits")
