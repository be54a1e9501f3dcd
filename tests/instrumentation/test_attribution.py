"""User attribution from the app's own auth dependency (``set_user``) and a loud user-id hook setting.

The JWT ``Depends(get_current_user)`` pattern of FastAPI's security tutorial, async and sync (the
sync dependency runs in the thread pool); authentication paths stay unattributed; the call wins
over the hook. A hook setting that cannot be used is one ERROR line naming the setting, and the
app stays instrumented, in process and under ``opentelemetry-instrument`` for real.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import OAuth2PasswordBearer

from studyin_analytics.aggregator.cli.settings import ConfigurationError, Settings
from studyin_analytics.exporter.wire import SPAN_KIND_SERVER
from studyin_analytics.instrumentation import Pseudonymizer, instrument_app, semconv, set_user
from studyin_analytics.instrumentation.attribution import HOOK_SETTING
from tests.support import ROOT
from tests.support.instrumented_app import free_port, read_spans, wait_listening
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

SECRET = "jwt-secret-for-the-attribution-test-0123456789"
USER = "learner-canary-55501"
EMAIL = "learner.canary@example.org"

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token")
attributed: list[bool] = []


def user_from(token: str) -> str:
    try:
        return str(jwt.decode(token, SECRET, algorithms=["HS256"])["sub"])
    except jwt.InvalidTokenError:
        raise HTTPException(status_code=401, detail="invalid token") from None


async def get_current_user(token: Annotated[str, Depends(oauth2_scheme)]) -> str:
    user_id = user_from(token)
    attributed.append(set_user(user_id))  # the one call this test is about
    return user_id


def get_current_user_sync(token: Annotated[str, Depends(oauth2_scheme)]) -> str:
    user_id = user_from(token)
    attributed.append(set_user(user_id))  # runs in the thread pool
    return user_id


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/materials/{material_id}")
    async def material(material_id: str, user: Annotated[str, Depends(get_current_user)]) -> dict[str, str]:
        return {"id": material_id}

    @app.get("/progress")
    def progress(user: Annotated[str, Depends(get_current_user_sync)]) -> dict[str, int]:
        return {"xp": 1}

    @app.post("/auth/token")
    async def token(user: Annotated[str, Depends(get_current_user)]) -> dict[str, str]:
        return {"access_token": "t"}  # a refresh endpoint that authenticates: still an auth path

    return app


def bearer(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {jwt.encode({'sub': user, 'email': EMAIL}, SECRET, algorithm='HS256')}"}


async def call(app: Any, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://studyin.test") as client:
        return await client.request(method, path, headers=headers or {})


def instrumented(pipeline: Pipeline, **kw: Any) -> Any:
    attributed.clear()  # each test builds one app: its record of set_user calls starts here
    options: dict[str, Any] = {"pseudonymizer": PSEUDONYMIZER, **kw}
    return instrument_app(
        build_app(),
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
        **options,
    )


def user_hash(pipeline: Pipeline, name: str) -> object:
    return dict(pipeline.span(name).attributes or {}).get(semconv.USER_HASH)


async def test_set_user_in_an_async_and_a_sync_jwt_dependency(pipeline: Pipeline) -> None:
    app = instrumented(pipeline)
    assert (await call(app, "GET", "/materials/m-1", bearer(USER))).status_code == 200
    assert (await call(app, "GET", "/progress", bearer(USER))).status_code == 200
    assert attributed == [True, True]
    expected = PSEUDONYMIZER.pseudonymize(USER)
    assert user_hash(pipeline, "GET /materials/{material_id}") == expected
    assert user_hash(pipeline, "GET /progress") == expected
    recorded = "".join(span.to_json() for span in pipeline.spans())
    assert USER not in recorded and EMAIL not in recorded


async def test_auth_paths_are_never_attributed(pipeline: Pipeline) -> None:
    app = instrumented(pipeline)
    assert (await call(app, "POST", "/auth/token", bearer(USER))).status_code == 200
    assert attributed == [False]
    assert user_hash(pipeline, "POST /auth/token") is None


async def test_set_user_wins_over_the_hook_which_still_serves_the_rest(pipeline: Pipeline) -> None:
    app = instrumented(pipeline, user_id_hook=lambda scope: "from-the-hook")
    await call(app, "GET", "/materials/m-1", bearer(USER))
    await call(app, "GET", "/openapi.json")  # no dependency: the hook attributes it
    assert user_hash(pipeline, "GET /materials/{material_id}") == PSEUDONYMIZER.pseudonymize(USER)
    assert user_hash(pipeline, "GET /openapi.json") == PSEUDONYMIZER.pseudonymize("from-the-hook")


async def test_set_user_does_nothing_where_nothing_is_measured(pipeline: Pipeline) -> None:
    assert set_user(USER) is False  # outside any request
    app = instrumented(pipeline, metrics_only=True)
    assert (await call(app, "GET", "/materials/m-1", bearer(USER))).status_code == 200
    assert attributed == [False] and pipeline.spans() == []
    assert set_user("") is False and set_user(None) is False


async def test_set_user_without_a_pseudonym_key_leaves_the_request_unattributed(pipeline: Pipeline) -> None:
    def no_key() -> Pseudonymizer:
        raise ConfigurationError("STUDYIN_ANALYTICS_PSEUDONYM_KEYS is not set")

    app = instrumented(pipeline, pseudonymizer=no_key)
    assert (await call(app, "GET", "/materials/m-1", bearer(USER))).status_code == 200
    assert attributed == [False]
    assert user_hash(pipeline, "GET /materials/{material_id}") is None


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("no_such_module_for_studyin:user_id", "module 'no_such_module_for_studyin' cannot be imported"),
        ("json:no_such_function", "'json' has no attribute 'no_such_function'"),
        ("json:__doc__", "is not callable"),
        ("json", "must be 'module:function'"),
    ],
)
async def test_every_hook_misconfiguration_is_one_error_line_and_the_app_stays_instrumented(
    reference: str, reason: str, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    app = instrumented(pipeline, user_id_hook=reference)
    with caplog.at_level(logging.DEBUG, logger="studyin_analytics"):
        for _ in range(3):
            assert (await call(app, "GET", "/openapi.json")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once, at start-up
    (error,) = errors
    message = error.getMessage()
    assert error.levelno == logging.ERROR and error.exc_info is None
    assert HOOK_SETTING in message and reason in message and "\n" not in message
    spans = pipeline.spans()
    assert [span.name for span in spans] == ["GET /openapi.json"] * 3  # instrumented,
    assert not [span for span in spans if semconv.USER_HASH in (span.attributes or {})]  # unattributed


@pytest.mark.parametrize("reference", ["no_such_module_for_studyin:user_id", "json:no_such_function"])
def test_a_broken_hook_setting_under_opentelemetry_instrument_is_loud_and_instruments(
    reference: str, settings: Settings
) -> None:
    """Before: a missing module silently disabled all instrumentation (DEBUG), a missing function
    printed a traceback and left the app uninstrumented."""
    port = free_port()
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "studyin_redis",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **settings.environment(),
        HOOK_SETTING: reference,
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
        response = httpx.get(f"http://127.0.0.1:{port}/materials/m-1", headers=bearer(USER), timeout=10)
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _out, err_bytes = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _out, err_bytes = process.communicate()
    err = err_bytes.decode()
    lines = [line for line in err.splitlines() if HOOK_SETTING in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    spans = [s for s in read_spans(settings, want=1) if s.kind == SPAN_KIND_SERVER]
    assert [s.attributes.get("http.route") for s in spans] == ["/materials/{material_id}"]
    # StudyIn's middleware, not FastAPI's built-in telemetry (raw url.path), made it; unattributed
    assert "url.path" not in spans[0].attributes and semconv.USER_HASH not in spans[0].attributes
