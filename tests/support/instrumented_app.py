"""Helpers of the tests that run an application under ``opentelemetry-instrument``: a free port,
waiting for the app to listen, the spans that reached the bus, the README's command line and
configuration."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.wire import SpanRecord, decode_entry
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app exited early: {process.communicate()[1].decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"app did not listen on {port} within {timeout_s} s")


def read_spans(settings: Settings, want: int, timeout_s: float = 20.0) -> list[SpanRecord]:
    client = redis.Redis.from_url(settings.redis_url or "")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            spans = [
                span
                for key in stream_keys(settings)
                for _entry_id, fields in client.xrange(key)
                for span in decode_entry(fields)
            ]
            if len(spans) >= want or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)
    finally:
        client.close()


def readme_command() -> str:
    """The README's zero-code command line (the one place it is written there)."""
    commands = set(re.findall(r"`([^`\n]*opentelemetry-instrument [^`\n]*)`", README))
    assert len(commands) == 1, f"one zero-code command expected in README.md, found {commands}"
    return commands.pop()


def analytics_env(settings: Settings) -> dict[str, str]:
    """Where this test's bus is, and its pseudonym key (the README's configuration)."""
    return {**settings.environment(), **settings.environment("pseudonym_keys")}
