"""Fixtures of the tests in tests/exporter/runtime/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from studyin_analytics.instrumentation.settings import Settings
from tests.support.api import Api, open_api
from tests.support.exporter import free_port, start_gateway, stop_process, wait_listening


@pytest.fixture
def gateway_log(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path]]:
    monkeypatch.setenv("STUDYIN_ANALYTICS_LOG_FORMAT", "json")
    port = free_port()
    log = tmp_path / "gateway.log"
    process = start_gateway(settings, port, log)
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop_process(process)


@pytest.fixture
def api_log(migrated: Settings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    assert migrated.jwt_secret is not None
    env = {
        **os.environ,
        **migrated.environment(),
        **migrated.environment("pseudonym_keys", "jwt_secret"),
        "STUDYIN_ANALYTICS_LOG_FORMAT": "json",
    }
    log = tmp_path / "api.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "studyin_analytics.aggregator.cli", "api", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(port, 60, process)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop_process(process)


@pytest.fixture
async def api(migrated: Settings) -> AsyncIterator[Api]:
    async for value_ in open_api(migrated):
        yield value_
