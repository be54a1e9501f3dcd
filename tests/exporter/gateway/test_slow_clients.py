"""Slow clients cannot hold the OTLP gateway's connections: the ``gateway`` command's read deadlines.

A real ``studyin-analytics gateway`` process, raw sockets (tests/support/slowclient.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from studyin_analytics.aggregator.devtools.embedded import free_port, wait_for_port
from studyin_analytics.instrumentation.settings import Settings
from tests.support.slowclient import check_read_deadlines


def test_the_gateway_command_cuts_off_slow_clients(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        **settings.environment("redis_url", "stream_prefix", "pseudonym_keys"),
        "STUDYIN_ANALYTICS_HTTP_HEADER_TIMEOUT_S": "1",
        "STUDYIN_ANALYTICS_HTTP_BODY_TIMEOUT_S": "1.5",
    }
    with (tmp_path / "gateway.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "studyin_analytics.aggregator.cli", "gateway", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, 60, process)
            check_read_deadlines(
                "127.0.0.1",
                port,
                header_timeout_s=1.0,
                body_timeout_s=1.5,
                post="/v1/traces",
                content_type="application/x-protobuf",
            )
        finally:
            process.terminate()
            process.wait(15)
    text = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in text, text
