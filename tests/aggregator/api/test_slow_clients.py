"""Slow clients cannot hold the query API's connections: header and body read deadlines.

On a real server with raw sockets (tests/support/slowclient.py): in process with the configuration the
``api`` command uses, and as the ``api`` command itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from studyin_analytics.aggregator.devtools.embedded import free_port, wait_for_port
from studyin_analytics.instrumentation.settings import Settings
from tests.support.api import served
from tests.support.slowclient import check_read_deadlines

TRACK = "/api/analytics/events/track"


async def test_the_api_cuts_off_slow_clients_at_its_read_deadlines(migrated: Settings) -> None:
    settings = migrated.with_overrides(http_header_timeout_s=1.0, http_body_timeout_s=1.5)
    async with served(settings) as (base, _app):
        port = int(base.rsplit(":", 1)[1])
        await asyncio.to_thread(
            check_read_deadlines, "127.0.0.1", port, header_timeout_s=1.0, body_timeout_s=1.5, post=TRACK
        )


def test_the_api_command_serves_with_the_deadlines(migrated: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        **migrated.environment(
            "redis_url", "postgres_url", "postgres_schema", "stream_prefix", "pseudonym_keys", "jwt_secret"
        ),
        "STUDYIN_ANALYTICS_HTTP_HEADER_TIMEOUT_S": "1",
        "STUDYIN_ANALYTICS_HTTP_BODY_TIMEOUT_S": "1.5",
    }
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "studyin_analytics.aggregator.cli", "api", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, 60, process)
            check_read_deadlines("127.0.0.1", port, header_timeout_s=1.0, body_timeout_s=1.5, post=TRACK)
        finally:
            process.terminate()
            process.wait(15)
    text = (tmp_path / "api.log").read_text()
    assert "Traceback" not in text, text
