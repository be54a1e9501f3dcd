"""The ASGI server's access log keeps no client address, query string or identity.

Unit tests of :class:`AccessLogFilter` on uvicorn-shaped records, then a real uvicorn in a
subprocess serving an instrumented FastAPI app, asked for paths holding a raw user id, ASCII,
internationalized and percent-encoded e-mail addresses and query strings, in each mode of
``STUDYIN_ANALYTICS_ACCESS_LOG``; ``off`` is the control that shows what uvicorn logs unfiltered.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from urllib.parse import quote

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from studyin_analytics.aggregator.devtools.embedded import free_port, wait_for_port
from studyin_analytics.instrumentation.accesslog import (
    ACCESS_LOGGER,
    AccessLogFilter,
    install_access_log_filter,
    scrub_line,
)
from studyin_analytics.instrumentation.emails import EMAIL_PLACEHOLDER
from tests.support import ROOT
from tests.support.exporter import stop_process

RAW_ID = "canary-uid-5e4d3c2b1a09"
EMAIL = "canary.5e4d3c@patients.example"
IDN_EMAIL = "kanarie.5e4d3c@bücher.example"
CLIENT = "198.51.100.23"


def access_record(path: str, client: str = f"{CLIENT}:51234") -> logging.LogRecord:
    """A record as uvicorn's HTTP protocols log it."""
    return logging.LogRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        (client, "GET", path, "1.1", 200),
        None,
    )


def test_route_mode_logs_the_route_of_the_current_server_span() -> None:
    tracer = TracerProvider().get_tracer("t")
    record = access_record(f"/users/{RAW_ID}/profile?email={EMAIL}")
    with tracer.start_as_current_span("GET", attributes={"http.route": "/users/{user_id}/profile"}):
        assert AccessLogFilter("route").filter(record)
    assert record.getMessage() == '- - "GET /users/{user_id}/profile HTTP/1.1" 200'
    outside = access_record(f"/users/{RAW_ID}")  # no span, no route: nothing of the path
    AccessLogFilter("route").filter(outside)
    assert outside.getMessage() == '- - "GET - HTTP/1.1" 200'


def test_path_mode_keeps_the_path_without_query_client_or_addresses() -> None:
    record = access_record(
        f"/users/{quote(IDN_EMAIL)}/x/{EMAIL}?token=s3cret#frag", client="[2001:db8::7]:443"
    )
    AccessLogFilter("path").filter(record)
    assert record.getMessage() == f'- - "GET /users/{EMAIL_PLACEHOLDER}/x/{EMAIL_PLACEHOLDER} HTTP/1.1" 200'


def test_records_of_another_layout_are_scrubbed_whole() -> None:
    record = logging.LogRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        "%s %s",
        (f"{CLIENT} [2001:db8::1]:8080", f"/a?e={EMAIL}"),
        None,
    )
    AccessLogFilter().filter(record)
    assert record.getMessage() == "- - /a"
    assert (
        scrub_line(f"at 12:30:45 from {CLIENT}:80 for {IDN_EMAIL}")
        == f"at 12:30:45 from - for {EMAIL_PLACEHOLDER}"
    )


def test_install_is_idempotent_and_off_removes_it() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    try:
        first = install_access_log_filter("route")
        second = install_access_log_filter("path")
        assert [f for f in logger.filters if isinstance(f, AccessLogFilter)] == [second]
        assert first is not second and second is not None and second.mode == "path"
        assert install_access_log_filter("off") is None
        assert not any(isinstance(f, AccessLogFilter) for f in logger.filters)
    finally:
        install_access_log_filter("off")
    with pytest.raises(ValueError, match="access log mode"):
        AccessLogFilter("everything")  # type: ignore[arg-type]


def test_instrument_app_and_the_instrumentor_install_it() -> None:
    from starlette.applications import Starlette

    from studyin_analytics.aggregator.cli.settings import Settings
    from studyin_analytics.instrumentation import StudyInInstrumentor, instrument_app

    logger = logging.getLogger(ACCESS_LOGGER)

    def installed() -> list[str]:
        return [f.mode for f in logger.filters if isinstance(f, AccessLogFilter)]

    try:
        install_access_log_filter("off")
        instrument_app(Starlette(), settings=Settings(access_log="path"))
        assert installed() == ["path"]
        install_access_log_filter("off")
        instrumentor = StudyInInstrumentor()
        instrumentor.instrument()
        try:
            assert installed() == ["route"]  # the default mode
        finally:
            instrumentor.uninstrument()
        assert installed() == []
    finally:
        install_access_log_filter("off")


EARLY = (
    "from studyin_analytics.instrumentation.accesslog import install_access_log_filter\n"
    "install_access_log_filter()\n"
    "import uvicorn\n"
    "uvicorn.main()\n"
)
"""The filter installed before uvicorn runs its ``dictConfig``, as the zero-code instrumentor does."""


def serve_and_log(mode: str, *, early: bool = False) -> list[str]:
    """Run the app under uvicorn with ``mode``, make the requests, return the access-log lines."""
    port = free_port()
    env = {**os.environ, "STUDYIN_ANALYTICS_ACCESS_LOG": mode, "PYTHONPATH": str(ROOT)}
    env.pop("STUDYIN_ANALYTICS_PSEUDONYM_KEYS", None)
    arguments = ["tests.support.access_log_app:app", "--port", str(port)]
    command = [sys.executable, "-m", "uvicorn", *arguments]
    if early:
        env["ACCESS_LOG_TEST_INSTALLED_EARLY"] = "1"
        command = [sys.executable, "-c", EARLY, *arguments]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, 60, process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get(f"/users/{RAW_ID}/profile", params={"email": EMAIL}).status_code == 200
            assert client.get(f"/users/{quote(IDN_EMAIL, safe='')}/profile").status_code == 200
            assert client.get(f"/users/{EMAIL}/profile").status_code == 200
            assert client.get(f"/nowhere/{RAW_ID}", params={"q": EMAIL}).status_code == 404
    finally:
        stop_process(process)
    out, err = process.communicate()
    lines = [line for line in (out + err).decode().splitlines() if "HTTP/1.1" in line]
    assert len(lines) == 4, (out + err).decode()[-3000:]
    return lines


def test_uvicorn_access_log_without_the_filter_leaks() -> None:
    """The control: what the filter is for is really in uvicorn's own log."""
    log = "\n".join(serve_and_log("off"))
    assert RAW_ID in log and EMAIL in log and "127.0.0.1:" in log and "?email=" in log


@pytest.mark.parametrize("early", [False, True], ids=["installed-by-the-app", "installed-before-uvicorn"])
def test_uvicorn_access_log_in_route_mode_holds_routes_only(early: bool) -> None:
    lines = serve_and_log("route", early=early)
    assert lines[:3] == ['INFO:     - - "GET /users/{user_id}/profile HTTP/1.1" 200 OK'] * 3
    assert lines[3].startswith('INFO:     - - "GET ') and lines[3].endswith('HTTP/1.1" 404 Not Found')
    log = "\n".join(lines)
    for secret in (RAW_ID, EMAIL, "bücher", "b%C3%BCcher", "127.0.0.1", "?", "nowhere"):
        assert secret not in log


def test_uvicorn_access_log_in_path_mode_holds_cleaned_paths() -> None:
    lines = serve_and_log("path")
    log = "\n".join(lines)
    for secret in (EMAIL, "kanarie", "b%C3%BCcher", "127.0.0.1", "?", "email="):
        assert secret not in log
    assert f'"GET /users/{RAW_ID}/profile HTTP/1.1" 200' in lines[0]  # ids in paths stay (documented)
    assert f'"GET /users/{EMAIL_PLACEHOLDER}/profile HTTP/1.1" 200' in lines[1]
    assert f'"GET /nowhere/{RAW_ID} HTTP/1.1" 404' in lines[3]
