"""`studyin-analytics aggregator --status` prints what docs/aggregator.md says it prints: the group's health
and lag, not the zero counters of the short-lived probe (an operator took them for the running member's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from studyin_analytics.aggregator.cli.settings import Settings
from tests.support import ROOT

DOC = (ROOT / "docs" / "aggregator.md").read_text()


def test_status_prints_the_documented_group_fields(migrated: Settings) -> None:
    bullet = DOC.split("`studyin-analytics aggregator --status`: JSON with", 1)[1].split("\n* ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", bullet))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    env.update(migrated.environment())
    result = subprocess.run(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", "aggregator", "--status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert documented <= set(status), documented - set(status)
    assert not {"totals", "uptime_s", "last_batch_at", "consumer"} & set(status), status
    assert status["healthy"] is True and status["lag"] == 0
