"""``studyin-analytics experiments create|list|show|stop`` as documented (README, docs/experiments.md).

The first call runs the command line in a subprocess as an operator would; the rest call ``main`` in-process
with the same environment (a subprocess costs seconds on a loaded CI machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.snapshots import SnapshotFollower
from studyin_analytics.instrumentation.experiments import SNAPSHOT_KIND, decode_snapshot
from tests.support.experiments import ExperimentsCli, cli_env, definition

CLI = [sys.executable, "-m", "studyin_analytics.aggregator.cli"]


def _subprocess(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    env.update(cli_env(settings))
    return subprocess.run(
        [*CLI, "experiments", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_create_list_show_stop(migrated: Settings, experiments_cli: ExperimentsCli, tmp_path: Path) -> None:
    path = tmp_path / "coach.json"
    path.write_text(json.dumps(definition("coach-prompt")))
    created = _subprocess(migrated, "create", str(path), "--by", "learning-team")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["version"] == 1
    follower = SnapshotFollower(
        migrated.redis_url or "", migrated.stream_prefix, SNAPSHOT_KIND, decode_snapshot, {}
    )
    try:
        assert follower.refresh_now() and set(follower.current()) == {"coach-prompt"}
        # Changing a running version needs --new-version.
        changed = definition("coach-prompt", guardrail_metrics=["xp"])
        refused = experiments_cli("create", "-", stdin=json.dumps(changed))
        assert refused.returncode == 1 and "start a new version" in refused.stderr
        again = experiments_cli("create", "-", "--new-version", stdin=json.dumps(changed))
        assert again.returncode == 0 and json.loads(again.stdout)["version"] == 2
        listed = json.loads(experiments_cli("list").stdout)
        assert [(v["key"], v["version"], v["status"]) for v in listed] == [("coach-prompt", 2, "running")]
        shown = json.loads(experiments_cli("show", "coach-prompt").stdout)
        assert [(v["version"], v["status"], v["created_by"]) for v in shown] == [
            (1, "stopped", "learning-team"),
            (2, "running", "cli"),
        ]
        assert experiments_cli("stop", "coach-prompt").returncode == 0
        assert follower.refresh_now() and follower.current() == {}
        assert experiments_cli("stop", "coach-prompt").returncode == 1
        assert experiments_cli("show", "nothing").returncode == 1
    finally:
        follower.close()


def test_an_invalid_definition_names_the_field_and_exits_2(experiments_cli: ExperimentsCli) -> None:
    bad = definition("coach-prompt", primary_metric="revenue")
    result = experiments_cli("create", "-", stdin=json.dumps(bad))
    assert result.returncode == 2
    assert "primary_metric" in result.stderr
    assert json.loads(experiments_cli("list").stdout) == []
