"""Zero-code: an unmodified FastAPI app under ``opentelemetry-instrument`` reaches the Redis bus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.wire import SPAN_KIND_SERVER
from studyin_analytics.instrumentation import Pseudonymizer
from tests.support import ROOT
from tests.support.instrumented_app import free_port, read_spans, wait_listening

USER = "zero-code-user-31337"


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
