"""``studyin-analytics api --wait-for-services``: started before its PostgreSQL, the API waits.

A real API command is started while its (private, embedded) PostgreSQL is down: it logs one
line, waits through PostgreSQL starting and the schema being migrated after it, then serves. A
wait that runs out fails as without it (exit 1, naming the server), after the wait.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import EmbeddedPostgres, free_port
from studyin_analytics.aggregator.storage.schema import migrate
from tests.support import TEST_JWT_SECRET, TEST_PSEUDONYM_KEY
from tests.support.aggregator_process import wait_for_text

pytestmark = pytest.mark.slow


def start_api(settings: Settings, log: Path, port: int, wait_s: str) -> subprocess.Popen[bytes]:
    secrets = {
        "STUDYIN_ANALYTICS_PSEUDONYM_KEYS": f"k1={TEST_PSEUDONYM_KEY}",
        "STUDYIN_ANALYTICS_JWT_SECRET": TEST_JWT_SECRET,
    }
    env = {**os.environ, **settings.environment(), **secrets}
    command = [sys.executable, "-m", "studyin_analytics.aggregator.cli", "api", "--host", "127.0.0.1"]
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [*command, "--port", str(port), "--wait-for-services", wait_s],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def wait_serving(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not answering within {timeout_s}s:\n{log.read_text()}")


def test_the_api_started_before_its_postgres_waits_for_it(
    settings: Settings, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    settings = settings.with_overrides(postgres_url=postgres.url)
    log = tmp_path / "api.log"
    port = free_port()
    process = start_api(settings, log, port, "120")
    try:
        wait_for_text(log, "waiting for PostgreSQL", process)
        postgres.start()
        time.sleep(1.0)  # PostgreSQL answers, but is not migrated yet: still waiting, not serving
        assert process.poll() is None, log.read_text()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        migrate(settings)
        wait_serving(f"http://127.0.0.1:{port}/healthz", process, log)
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it caught: -SIGTERM, as without the wait
        assert process.wait(30) in (0, -signal.SIGTERM), log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    text = log.read_text(errors="replace")
    assert text.count("waiting for PostgreSQL") == 1, text  # one line when waiting starts
    assert "PostgreSQL at " in text and " answers after " in text, text


def test_the_api_wait_is_bounded_and_then_names_the_server(
    settings: Settings, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    settings = settings.with_overrides(postgres_url=postgres.url)
    log = tmp_path / "api.log"
    started = time.monotonic()
    process = start_api(settings, log, free_port(), "2")
    try:
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text(errors="replace")
    assert code == 1, text
    assert time.monotonic() - started >= 2.0
    assert "cannot reach PostgreSQL" in text and str(postgres.port) in text, text
