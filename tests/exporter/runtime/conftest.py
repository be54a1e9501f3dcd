"""Fixtures of the tests in tests/exporter/runtime/."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import HTTPServer
from pathlib import Path

import httpx
import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.gateway.app import create_gateway
from tests.support.api import Api, open_api
from tests.support.exporter import OtlpReceiverHandler, free_port, start_gateway, stop_process, wait_listening
from tests.support.gateway import serving


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


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_gateway(settings)
    async with serving(app) as client:
        yield client


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    bodies: list[tuple[str, bytes]] = []
    handler = type("Receiver", (OtlpReceiverHandler,), {"bodies": bodies})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], bodies
    finally:
        server.shutdown()
        server.server_close()
