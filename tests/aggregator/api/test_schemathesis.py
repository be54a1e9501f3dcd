"""schemathesis run --checks all against the query API: a real server, PostgreSQL, Redis, tokens.

Every operation of the published OpenAPI document (the live feed aside: it never ends) is
called with generated valid and invalid requests, and every check schemathesis has is applied:
no 5xx, status codes, content types, headers and bodies as documented, invalid data refused,
valid data accepted, authentication enforced (ignored_auth, missing_required_header),
unsupported methods refused. The funnel and retention routes too: a saved funnel exists, so
reading one is fuzzed with its name as well as with names nobody saved. Bounded: a fixed seed,
deterministic generation and a few examples per operation. tests/support/schemathesis_hooks.py
tells the generator the one constraint OpenAPI cannot state (a heatmap's start not after its end).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.instrumentation import StudyInTracker
from tests.support import ROOT
from tests.support.api import LEARNER_A, STAFF, run_pipeline, served, token

CONFIG = ROOT / "tests" / "support" / "schemathesis.toml"
HOOKS = ROOT / "tests" / "support" / "schemathesis_hooks.py"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 10
pytestmark = pytest.mark.timeout(1500)  # two runs of about a minute each; several on a loaded machine
SAVED = "/api/analytics/analysis/saved-funnels"
SAVED_NAME = "pathway"
NOW = datetime.now(UTC)
SAVED_DEFINITION = {
    "steps": [{"event": "material_view"}, {"event": "xp_awarded"}],
    "start": (NOW - timedelta(days=7)).isoformat(),
    "end": (NOW + timedelta(days=1)).isoformat(),
}


async def _schemathesis(base: str, bearer: str, workdir: Path, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {bearer}",
        "--exclude-path",
        "/api/analytics/live",
        *extra,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261202",
        "--generation-deterministic",  # and so no example database
        "--workers",
        "1",
        "--request-timeout",
        "10",
        cwd=workdir,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    # A bound for a hang only: a run takes about a minute, 173 s at load average 19 on 2 cores.
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_schemathesis_with_every_check_finds_nothing(migrated: Settings, tmp_path: Path) -> None:
    """A learner (own data; staff views refused) and a staff member (system and cohort views)."""

    def produce(tracker: StudyInTracker, _provider: TracerProvider) -> None:
        with tracker.session(LEARNER_A) as session:
            tracker.material_view(LEARNER_A, "cardio-101", "video", session=session)
            tracker.xp_awarded(LEARNER_A, 25, "quiz", session=session)
        tracker.achievement_unlocked(LEARNER_A, "first-steps")
        tracker.streak_updated(LEARNER_A, 3)
        tracker.api_request("/materials/{id}", "GET", 200, 12.5, user_id=LEARNER_A)

    assert await run_pipeline(migrated, produce) >= 6  # every view has rows to answer with
    async with served(migrated) as (base, _app):
        # A saved funnel the configuration names (tests/support/schemathesis.toml), so reading one is
        # fuzzed past the 404 of names nobody saved.
        staff = {"Authorization": f"Bearer {token(migrated, STAFF, roles=['staff'])}"}
        async with httpx.AsyncClient(base_url=base, headers=staff) as client:
            saved = await client.post(f"{SAVED}/{SAVED_NAME}/versions", json=SAVED_DEFINITION)
            assert saved.status_code == 201, saved.text
        # The learner is refused every staff route alike; the analysis routes' large bodies are fuzzed
        # with the staff token only (a minute less on a loaded machine).
        learner = (token(migrated, LEARNER_A), ("--exclude-path-regex", "^/api/analytics/analysis/"))
        for bearer, extra in (learner, (token(migrated, STAFF, roles=["staff"]), ())):
            code, output = await _schemathesis(base, bearer, tmp_path, *extra)
            assert code == 0, output
            assert "Operations:" in output and "25 total" in output, output  # the whole spec was read
            # Every generated case passed. ("Authentication failed" is a warning, expected for the
            # learner: the staff-only operations answer 403 whatever is sent.)
            cases = re.search(r"(\d+) generated, (\d+) passed", output.split("SUMMARY")[-1])
            assert cases is not None and cases[1] == cases[2], output
            assert "❌" not in output, output
