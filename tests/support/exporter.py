"""Span factories and server helpers shared by the exporter tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import redis
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedis, free_port
from studyin_analytics.exporter import wire
from studyin_analytics.instrumentation import semconv


class Capture(SpanProcessor):
    """Keeps every ended span (the exporter tests call ``export`` themselves)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def make_spans(
    n: int, *, prefix: str = "span", users: Sequence[str] = ("t1:" + "0" * 32,)
) -> list[ReadableSpan]:
    """``n`` spans named ``{prefix}-{i}``, each with a user pseudonym and one domain event."""
    capture = Capture()
    provider = TracerProvider()
    provider.add_span_processor(capture)
    tracer = provider.get_tracer("tests")
    for i in range(n):
        user = users[i % len(users)]
        with tracer.start_as_current_span(f"{prefix}-{i}", attributes={semconv.USER_HASH: user}) as span:
            span.add_event(
                semconv.event_name("xp_awarded"),
                {semconv.FIELD_ATTRIBUTES["xp_amount"]: i, semconv.USER_HASH: user},
            )
    provider.shutdown()
    return capture.spans


def stream_span_names(client: redis.Redis, key: str) -> list[str]:
    names: list[str] = []
    for _, fields in client.xrange(key):
        names.extend(record.name for record in wire.decode_entry(fields))
    return names


@contextlib.contextmanager
def private_redis(
    directory: Path, *, appendonly: bool = False, bundled: bool = False
) -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own (the system's 7.x if installed; ``bundled``: the wheel's 6.2)."""
    directory.mkdir(parents=True, exist_ok=True)
    server = EmbeddedRedis(directory, appendonly=appendonly, bundled=bundled)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_listening(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def gateway_env(settings: Settings, port: int) -> dict[str, str]:
    env = dict(os.environ)
    keys = ",".join(f"{k}={v.get_secret_value()}" for k, v in settings.pseudonym_keys.items())
    env.update(
        STUDYIN_ANALYTICS_REDIS_URL=settings.redis_url or "",
        STUDYIN_ANALYTICS_STREAM_PREFIX=settings.stream_prefix,
        STUDYIN_ANALYTICS_PSEUDONYM_KEYS=keys,
        STUDYIN_ANALYTICS_GATEWAY_PORT=str(port),
        STUDYIN_ANALYTICS_STREAM_SHARDS=str(settings.stream_shards),
    )
    return env


def start_gateway(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``studyin-analytics gateway`` as a child process, listening on ``port``."""
    handle = open(log, "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", "gateway", "--port", str(port)],
        env=gateway_env(settings, port),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    wait_listening(port, 30, process)
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


__all__ = ["free_port"]


def follow(replica: EmbeddedRedis, primary: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(replica.url)
    try:
        client.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 30
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
    finally:
        client.close()


class OtlpReceiverHandler(BaseHTTPRequestHandler):
    """Records each POST (path, body) in ``bodies`` (set on a subclass) and answers 200."""

    bodies: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.bodies.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass
