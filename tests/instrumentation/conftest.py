"""Fixtures of the instrumentation tests that run the package as a new user installs it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import propagate
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability

from studyin_analytics.instrumentation import (
    StudyInTracker,
    carriers,
)
from studyin_analytics.instrumentation.attribution import resolve_user_id_hook
from tests.support.log_carrier import Carried
from tests.support.pipeline import PSEUDONYMIZER, STATIC_FILE, Pipeline


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    # The user-id hook named by a setting is resolved once per process: a test that names another
    # (tests/instrumentation/test_attribution.py) must not leave it, or find another's, in the cache.
    resolve_user_id_hook.cache_clear()
    yield Pipeline()
    resolve_user_id_hook.cache_clear()


@pytest.fixture
def stable_semconv(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stable HTTP conventions (http.server.request.duration, http.request.method...)."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    _OpenTelemetrySemanticConventionStability._initialized = False
    yield
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN")
    _OpenTelemetrySemanticConventionStability._initialized = False


@pytest.fixture
def tracker(pipeline: Pipeline) -> StudyInTracker:
    return StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)


@pytest.fixture
def no_network() -> Iterator[None]:
    """Any socket connect or send during the block fails the test: the hot path does no I/O."""
    calls: list[str] = []
    originals = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex", "send", "sendall")}

    def forbidden(name: str) -> Any:
        def call(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"socket.{name} on the tracker's hot path")

        return call

    for name in originals:
        setattr(socket.socket, name, forbidden(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(socket.socket, name, original)
    assert calls == []


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No STUDYIN_ANALYTICS_* variable; the working directory is an empty temporary one."""
    import os

    for name in [k for k in os.environ if k.startswith("STUDYIN_ANALYTICS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "STUDYIN_ANALYTICS_STREAM_PREFIX=from-dotenv\nSTUDYIN_ANALYTICS_ACCESS_LOG=off\n"
    )
    return tmp_path


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    """A directory with one file (STATIC_FILE) for an app's static mount."""
    (tmp_path / STATIC_FILE).write_text("static")
    return tmp_path


@pytest.fixture
def carried() -> Carried:
    """A tracker on the log-record carrier, spans and log records kept in memory."""
    return Carried()


@pytest.fixture
def default_propagator() -> Iterator[None]:
    """Restores the global propagator a test replaces."""
    previous = propagate.get_global_textmap()
    yield
    propagate.set_global_textmap(previous)


@pytest.fixture
def unwarned() -> Iterator[None]:
    """As if no tracker of this process had warned yet that it records span events (once per process)."""
    carriers._span_events_warned.clear()
    yield
    carriers._span_events_warned.clear()
