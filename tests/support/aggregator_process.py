"""A real ``studyin-analytics aggregator`` process against a private PostgreSQL (outage tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.workload import Workload, build, mismatches, truth_of

CONSUMER = "outage-0"


def start(settings: Settings, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.environment(), "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0"}
    command = [sys.executable, "-m", "studyin_analytics.aggregator.cli", "aggregator"]
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [*command, "--consumer-name", CONSUMER, *extra], env=env, stdout=handle, stderr=subprocess.STDOUT
        )


def wait_for_text(log: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout_s}s:\n{log.read_text()}")


def wait_drained(settings: Settings, timeout_s: float = 90.0) -> None:
    stream = stream_keys(settings)[0]
    client = redis.Redis.from_url(settings.redis_url or "")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for info in client.xinfo_groups(stream):
                if info["name"].decode() != settings.consumer_group:
                    continue
                last: Any = client.xinfo_stream(stream)["last-generated-id"]
                if int(info["pending"]) == 0 and info["last-delivered-id"] == last:
                    return
            time.sleep(0.2)
    finally:
        client.close()
    raise AssertionError(f"group not drained within {timeout_s}s")


def terminate(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def exact(settings: Settings, wl: Workload) -> list[str]:
    async def run() -> list[str]:
        conn = await connect(settings)
        try:
            return await mismatches(conn, truth_of(wl))
        finally:
            await conn.close()

    return asyncio.run(run())


def workload(settings: Settings, seed: int) -> Workload:
    return build(Pseudonymizer.from_settings(settings), users=30, seed=seed, spans_per_entry=10)
