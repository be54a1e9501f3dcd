"""A real third-party app, unmodified, under the documented zero-code command, end to end into PostgreSQL.

FastAPI's own "bigger applications" example (routers under prefixes, router and app-level
dependencies) comes from FastAPI's source distribution, fetched from the package registry at
test time for the FastAPI version a new user gets (cached under ``.test-cache/``, never
committed). It runs in a virtualenv with only this package, under the README's command, with a
user-id hook of ours that reads a canary user from a header; requests carry the canary id and
e-mail in paths, queries, headers and cookies. Then the aggregator rolls the bus into
PostgreSQL, and there: the full route templates with their prefixes, unmatched requests under
``_OTHER`` with their status, the canary's pseudonym, and the canary itself nowhere (Redis,
PostgreSQL, the app's and the aggregator's logs).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.instrumentation import Pseudonymizer
from tests.support import postgres_dump, redis_dump
from tests.support.fresh_venv import FreshVenv, clean_env, extract, fetch_sdist, stop
from tests.support.instrumented_app import analytics_env, free_port, readme_command, wait_listening

CANARY_ID = "canary-learner-77123"
CANARY_EMAIL = "canary.learner77123@example.org"
CANARIES = (CANARY_ID, CANARY_EMAIL, "canary.learner77123", "77123")
EXAMPLE = "docs_src/bigger_applications/app"
HOOK = '''"""The canary's user id, from a header (a test's stand-in for an app's own authentication)."""


def user_id(scope):
    for key, value in scope.get("headers") or ():
        if key == b"x-canary-user":
            return value.decode()
    return None
'''

TOKEN = {"token": "jessica"}  # the example's app-wide query dependency
X_TOKEN = {"x-token": "fake-super-secret-token"}  # its router dependency
# (method, path, query, headers, status, the route PostgreSQL must hold)
REQUESTS: list[tuple[str, str, dict[str, str], dict[str, str], int, str]] = [
    ("GET", "/", TOKEN, {}, 200, "/"),
    ("GET", "/users/", TOKEN, {}, 200, "/users/"),
    ("GET", "/users/me", TOKEN, {}, 200, "/users/me"),
    ("GET", f"/users/{CANARY_EMAIL}", TOKEN, {}, 200, "/users/{username}"),
    ("GET", "/items/", TOKEN, X_TOKEN, 200, "/items/"),
    ("GET", "/items/plumbus", TOKEN, X_TOKEN, 200, "/items/{item_id}"),
    ("GET", f"/items/{CANARY_ID}", {**TOKEN, "email": CANARY_EMAIL}, X_TOKEN, 404, "/items/{item_id}"),
    ("PUT", "/items/plumbus", TOKEN, X_TOKEN, 200, "/items/{item_id}"),
    ("PUT", f"/items/{CANARY_ID}", TOKEN, X_TOKEN, 403, "/items/{item_id}"),
    ("DELETE", "/items/plumbus", TOKEN, X_TOKEN, 405, "/items/{item_id}"),
    ("POST", "/admin/", TOKEN, X_TOKEN, 200, "/admin/"),  # include_router(prefix="/admin")
    ("POST", "/admin/", TOKEN, {}, 422, "/admin/"),
    ("GET", "/users/me", {"token": CANARY_EMAIL}, {}, 400, "/users/me"),
    ("GET", "/openapi.json", {}, {}, 200, "/openapi.json"),
    ("GET", "/wp-login.php", {"user": CANARY_EMAIL}, {}, 404, "_OTHER"),
    ("GET", f"/{CANARY_ID}/profile", {}, {}, 404, "_OTHER"),
]


@dataclass
class Run:
    statuses: list[int]
    stdout: str
    stderr: str


def prepare(venv: FreshVenv, tmp_path: Path) -> tuple[Path, Path]:
    """The example, extracted as shipped, and the folder of our hook module."""
    version = venv.version_of("fastapi")
    sdist = fetch_sdist(venv, "fastapi", version)
    source = extract(sdist, f"fastapi-{version}/{EXAMPLE}", tmp_path / "sdist")
    workdir = tmp_path / "project"
    shutil.copytree(source, workdir / "app")
    assert (workdir / "app" / "main.py").is_file() and (workdir / "app" / "routers" / "items.py").is_file()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "canary_hook.py").write_text(HOOK)
    return workdir, hooks


def run_bigger_app(venv: FreshVenv, settings: Settings, tmp_path: Path) -> Run:
    workdir, hooks = prepare(venv, tmp_path)
    command = readme_command()
    assert command.endswith(" app:app"), command
    command = command.removesuffix("app:app") + "app.main:app"  # where the example's app object is
    port = free_port()
    env = clean_env(
        venv,
        UVICORN_PORT=str(port),
        PYTHONPATH=str(hooks),
        STUDYIN_ANALYTICS_USER_ID_HOOK="canary_hook:user_id",
        **analytics_env(settings),
    )
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    statuses = []
    try:
        wait_listening(port, process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for method, path, query, headers, _status, _route in REQUESTS:
                canary_headers = {
                    "x-canary-user": CANARY_ID,
                    "cookie": f"session={CANARY_ID}",
                    "user-agent": f"browser ({CANARY_EMAIL})",
                }
                response = client.request(method, path, params=query, headers={**headers, **canary_headers})
                statuses.append(response.status_code)
    finally:
        out, err = stop(process)
    return Run(statuses, out, err)


def assert_no_canary(where: str, text: str | bytes) -> None:
    found = [c for c in CANARIES if (c.encode() if isinstance(text, bytes) else c) in text]
    assert not found, f"canary {found} in {where}"


async def test_fastapi_bigger_applications_example_end_to_end(
    new_user_venv: FreshVenv, migrated: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = migrated
    run = run_bigger_app(new_user_venv, settings, tmp_path)
    assert run.statuses == [status for *_rest, status, _route in REQUESTS], run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "ERROR" not in run.stderr, run.stderr[-3000:]

    with caplog.at_level(logging.DEBUG, logger="studyin_analytics"):
        async with Aggregator(settings) as aggregator:
            totals = await aggregator.drain(timeout_s=30)
    assert totals.events_inserted == len(REQUESTS)

    conn = await asyncpg.connect(
        settings.postgres_url, server_settings={"search_path": settings.postgres_schema}
    )
    try:
        events = await conn.fetch(
            "SELECT properties->>'method' AS method, properties->>'route' AS route,"
            " (properties->>'status_code')::int AS status, user_hash"
            " FROM analytics_events WHERE event_type = 'api_request'"
        )
        metrics = await conn.fetch("SELECT route, method, requests, client_errors FROM system_metrics")
    finally:
        await conn.close()
    expected = sorted((method, route, status) for method, _p, _q, _h, status, route in REQUESTS)
    assert sorted((e["method"], e["route"], e["status"]) for e in events) == expected
    pseudonym = Pseudonymizer.from_settings(settings).pseudonymize(CANARY_ID)
    assert {e["user_hash"] for e in events} == {pseudonym}  # the hook attributed every request
    by_route: dict[tuple[str, str], int] = {}
    for method, route, _status in expected:
        by_route[(route, method)] = by_route.get((route, method), 0) + 1
    assert {(m["route"], m["method"]): m["requests"] for m in metrics} == by_route
    assert sum(m["client_errors"] for m in metrics) == sum(1 for *_r, s, _ in REQUESTS if 400 <= s < 500)

    assert_no_canary("Redis", redis_dump(settings.redis_url or "", settings.stream_prefix))
    tables = await postgres_dump(settings)
    assert_no_canary("PostgreSQL", tables)
    assert pseudonym in tables
    assert_no_canary("the app's stderr (its logs and ours)", run.stderr)
    assert_no_canary("the aggregator's logs", caplog.text)


def test_the_real_apps_access_log_has_no_canary(
    new_user_venv: FreshVenv, settings: Settings, tmp_path: Path
) -> None:
    run = run_bigger_app(new_user_venv, settings, tmp_path)
    assert run.statuses == [status for *_rest, status, _route in REQUESTS]
    assert "GET /" in run.stdout  # the access log is on, as uvicorn's default
    assert_no_canary("uvicorn's access log", run.stdout)
