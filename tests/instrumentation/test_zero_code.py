"""Zero-code: an unmodified FastAPI app under ``opentelemetry-instrument`` reaches the Redis bus."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.wire import SPAN_KIND_SERVER, SpanRecord, decode_entry
from studyin_analytics.instrumentation import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support import ROOT

USER = "zero-code-user-31337"


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


def test_unmodified_fastapi_app_under_opentelemetry_instrument(settings: Settings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "studyin_redis",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "zero-code-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_PYTHON_ASGI_EXCLUDED_URLS": "healthz",
        "STUDYIN_ANALYTICS_REDIS_URL": settings.redis_url or "",
        "STUDYIN_ANALYTICS_STREAM_PREFIX": settings.stream_prefix,
        "STUDYIN_ANALYTICS_PSEUDONYM_KEYS": ",".join(
            f"{key_id}={secret.get_secret_value()}" for key_id, secret in settings.pseudonym_keys.items()
        ),
    }
    command = [
        str(Path(sys.executable).with_name("opentelemetry-instrument")),
        sys.executable,
        "-m",
        "uvicorn",
        "tests.support.zero_code_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            auth = {"authorization": f"Bearer {USER}"}
            assert client.get("/materials/cardio-101?x=1", headers=auth).status_code == 200
            assert client.post("/auth/login", headers=auth).status_code == 200
            assert client.get("/healthz").status_code == 200
            assert client.get("/fail", headers=auth).status_code == 500
    finally:
        process.send_signal(signal.SIGTERM)  # uvicorn shuts down; the SDK flushes at exit
        try:
            _out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _out, err = process.communicate()
    # uvicorn re-raises SIGTERM after its graceful shutdown; the spans were flushed at lifespan end
    assert process.returncode in (0, -signal.SIGTERM), err.decode()[-2000:]

    everything = read_spans(settings, want=3)
    # one server span per request: FastAPI's built-in telemetry (raw url.path) is off
    assert not [s.name for s in everything if s.name.startswith("fastapi.") or "url.path" in s.attributes]
    spans = [s for s in everything if s.kind == SPAN_KIND_SERVER]
    assert len(spans) == 3, [s.name for s in spans]
    by_route = {s.attributes.get("http.route"): s for s in spans}
    assert set(by_route) == {"/materials/{material_id}", "/auth/login", "/fail"}, [s.name for s in spans]
    user_hash = Pseudonymizer.from_settings(settings).pseudonymize(USER)
    material = by_route["/materials/{material_id}"]
    assert material.name == "GET /materials/{material_id}"
    assert material.attributes["user.hash"] == user_hash
    assert (
        material.attributes.get("http.status_code", material.attributes.get("http.response.status_code"))
        == 200
    )
    assert "user.hash" not in by_route["/auth/login"].attributes
    failed = by_route["/fail"]
    assert failed.attributes["error.type"] == "LookupError"
    assert material.resource.get("service.name") == "zero-code-test"
    assert USER not in repr(spans)
