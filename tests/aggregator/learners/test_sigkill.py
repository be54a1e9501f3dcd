"""``studyin-analytics learner erase`` killed with SIGKILL midway, then run again: the same end state
as one uninterrupted run (nothing of the learner anywhere, everyone else untouched)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from studyin_analytics.aggregator.learners.identity import learner_of
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.aggregator.warehouse.readback import export_all
from tests.support import TEST_PSEUDONYM_KEY
from tests.support.erasure import drain, others_truth, rollup_mismatches
from tests.support.workload import build, push

from .conftest import Warehouse
from .test_erasure import SEED, VICTIM, scan_everything

CLI = str(Path(sys.executable).with_name("studyin-analytics"))


def _env(wh: Warehouse) -> dict[str, str]:
    return {
        **os.environ,
        **wh.env(),
        "STUDYIN_ANALYTICS_STREAM_PREFIX": wh.settings.stream_prefix,
        "STUDYIN_ANALYTICS_PSEUDONYM_KEYS": f"t1={TEST_PSEUDONYM_KEY}",
    }


def _erase(wh: Warehouse, kill_after: str | None) -> subprocess.CompletedProcess[str] | None:
    env = _env(wh)
    args = [CLI, "learner", "erase", "--user-id", "-", "--settle", "0", "--actor", "test"]
    if kill_after is None:
        return subprocess.run(
            args, input=VICTIM + "\n", env=env, capture_output=True, text=True, timeout=120, check=False
        )
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(VICTIM + "\n")
    proc.stdin.close()
    for line in proc.stderr:
        if line.startswith(kill_after):
            os.kill(proc.pid, signal.SIGKILL)  # a real kill, mid-erasure
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"ended before {kill_after!r}"
    return None


@pytest.mark.parametrize("kill_after", ["postgresql:"])  # killed in the warehouse pass, the longest
def test_killed_midway_then_run_again_ends_as_one_run(warehouse: Warehouse, kill_after: str) -> None:
    wh = warehouse
    settings = wh.settings
    wl = build(Pseudonymizer.from_settings(settings), users=6, seed=SEED, spans_per_entry=5)
    learner = learner_of(VICTIM, settings)
    half = len(wl.entries) // 2
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries[:half])
    asyncio.run(drain(settings))
    export_all(wh)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries[half:])  # some still on the bus

    _erase(wh, kill_after)
    done = _erase(wh, None)
    assert done is not None and done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] and report["found_after"]["postgresql"] == {}
    assert VICTIM not in done.stdout + done.stderr  # the raw id is never printed

    assert scan_everything(wh, learner) == {"redis": [], "postgresql": [], "parquet": [], "iceberg": []}
    asyncio.run(drain(settings))  # the rewritten bus entries: everyone else's events, stored once
    found = asyncio.run(rollup_mismatches(settings, others_truth(wl, learner.user_hashes[0])))
    # The victim's events still on the bus were never counted into the cohort and system aggregates.
    assert [m for m in found if not m.startswith(("summary", "daily learners", "system"))] == []


def test_the_documented_export_command_line(warehouse: Warehouse, tmp_path: Path) -> None:
    """``echo "$USER_ID" | studyin-analytics learner export --user-id - --output DIR`` (docs/privacy.md)."""
    wh = warehouse
    wl = build(Pseudonymizer.from_settings(wh.settings), users=3, seed=SEED, spans_per_entry=5)
    push(wh.settings.redis_url or "", stream_keys(wh.settings)[0], wl.entries)
    asyncio.run(drain(wh.settings))
    out = tmp_path / "learner-42"
    args = [CLI, "learner", "export", "--user-id", "-", "--output", str(out), "--actor", "dpo:ticket-1"]
    done = subprocess.run(
        args, input=f"wl-user-{SEED}-1\n", env=_env(wh), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (out / "learner.jsonl").read_text().splitlines()]
    assert lines and {r["sink"] for r in lines} == {"postgresql", "redis"}  # acked entries stay on the bus
    assert "`sink`" in (out / "README.md").read_text()
    assert f"wl-user-{SEED}-1" not in (out / "learner.jsonl").read_text() + done.stdout + done.stderr
    audit = asyncio.run(_audit_rows(wh))
    assert audit == [("dpo:ticket-1", "learner export")]


async def _audit_rows(wh: Warehouse) -> list[tuple[str, str]]:
    from studyin_analytics.aggregator.storage.db import connect

    conn = await connect(wh.settings)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT actor_hash, endpoint FROM access_audit_log")]
    finally:
        await conn.close()
