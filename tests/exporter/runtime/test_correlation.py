"""Request correlation ids: the real gateway and the real query API tag their log records.

Both services run as ``studyin-analytics gateway`` / ``studyin-analytics api`` subprocesses
with ``STUDYIN_ANALYTICS_LOG_FORMAT=json``. Requests that the services refuse (and so log) are
sent concurrently, each with its own id; every JSON record must carry the id of the request
that caused it, the response must echo that id in ``X-Request-ID``, unsafe ``X-Request-ID``
values must be replaced, and no user value may reach the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from studyin_analytics.exporter.runtime import correlation
from studyin_analytics.exporter.runtime.correlation import request_correlation_id, trace_id_of
from studyin_analytics.exporter.runtime.logconfig import configure_logging
from studyin_analytics.instrumentation import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.api import bearer, token

RAW_ID = "canary-uid-5d4c3b2a1f0e"
EMAIL = "canary.5d4c3b@patients.example"
OTHER_RAW_ID = "canary-other-0a1b2c3d"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
NEW_ID = re.compile(r"[0-9a-f]{32}")
UNSAFE_REQUEST_IDS = (
    EMAIL,  # a user value
    'x" "level": "ERROR',  # an attempt to forge JSON fields
    "a" * 65,  # too long
    "",  # empty
)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, TRACE_ID),
        (f" {TRACEPARENT} ", TRACE_ID),  # optional whitespace around the value
        (f"01-{TRACE_ID}-00f067aa0ba902b7-01-future-field", TRACE_ID),  # later versions may add fields
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero trace id
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", None),  # upper case is not allowed
        (f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01", None),  # short trace id
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01\n", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_traceparent_trace_id(header: str, expected: str | None) -> None:
    assert trace_id_of(header.encode()) == expected


def test_request_id_precedence_and_safety() -> None:
    def cid(*headers: tuple[str, str]) -> str:
        return request_correlation_id([(k.encode(), v.encode()) for k, v in headers])

    assert cid(("x-request-id", "proxy-1"), ("traceparent", TRACEPARENT)) == TRACE_ID
    assert cid(("traceparent", "garbage"), ("x-request-id", "proxy-1")) == "proxy-1"
    assert cid(("x-request-id", "Ab0._-" * 10 + "abcd")) == "Ab0._-" * 10 + "abcd"  # 64: the limit
    assert cid(("x-request-id", "first"), ("x-request-id", "second")) == "first"
    for unsafe in UNSAFE_REQUEST_IDS:
        replaced = cid(("x-request-id", unsafe))
        assert NEW_ID.fullmatch(replaced), unsafe
    assert cid() != cid()


# --- the middleware in front of Starlette's error handling ---------------------------------------


async def test_an_unhandled_error_is_logged_and_answered_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The id is set outside ``ServerErrorMiddleware``: the 500 and its log record carry it."""
    app = FastAPI()
    log = logging.getLogger("studyin_analytics.test.correlation")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("detail")

    @app.exception_handler(Exception)
    async def server_problem(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s", type(exc).__name__)
        return JSONResponse({"code": "internal_error"}, status_code=500)

    correlation.install(app)
    records: list[str | None] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(correlation.correlation_id.get())

    handler = Keep()
    log.addHandler(handler)
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get("/boom", headers={"x-request-id": "req-500"})
    finally:
        log.removeHandler(handler)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert records == ["req-500"]
    assert correlation.correlation_id.get() is None  # reset after the request


# --- the real services -------------------------------------------------------------------------


def json_records(log: Path) -> list[dict[str, Any]]:
    """The JSON records of a service's output (uvicorn's and rich's own lines are not ours)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def records_of(records: list[dict[str, Any]], cid: str) -> list[tuple[str, str]]:
    return [(r["level"], r["message"]) for r in records if r.get("correlation_id") == cid]


def assert_no_user_values(log: Path, *values: str) -> None:
    text = log.read_text()
    for value in values:
        assert value not in text, f"{value!r} reached the log:\n{text}"


def otlp_json(spans: list[dict[str, Any]]) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()


def span(trace_id: str, attributes: dict[str, str]) -> dict[str, Any]:
    now = time.time_ns()  # inside the event window (a time older than raw retention is rejected)
    return {
        "traceId": trace_id,
        "spanId": "00f067aa0ba902b7",
        "name": "GET /api/things",
        "kind": 2,
        "startTimeUnixNano": str(now - 100_000_000),
        "endTimeUnixNano": str(now),
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()],
    }


async def test_gateway_records_carry_the_request_id(gateway_log: tuple[str, Path]) -> None:
    url, log = gateway_log
    user_attributes = {"user.id": RAW_ID, "user.email": EMAIL}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        traces = f"{url}/v1/traces"
        refused_type, not_json, partial, *unsafe, ok, health = await asyncio.gather(
            # 415 for a content type that quotes a user value; the id is the traceparent's trace id
            client.post(
                traces,
                content=b"{}",
                headers={"content-type": f"application/{RAW_ID}", "traceparent": TRACEPARENT},
            ),
            # 400; a safe X-Request-ID (a proxy's) is kept
            client.post(
                traces,
                content=f"not json {EMAIL}".encode(),
                headers={"content-type": "application/json", "x-request-id": "collector-req.42_a"},
            ),
            # 200 with one span rejected (all-zero trace id); an unsafe X-Request-ID is replaced
            client.post(
                traces,
                content=otlp_json([span("0" * 32, user_attributes), span(TRACE_ID, user_attributes)]),
                headers={"content-type": "application/json", "x-request-id": EMAIL},
            ),
            *(
                client.post(
                    traces, content=b"\x00", headers={"content-type": "text/plain", "x-request-id": value}
                )
                for value in UNSAFE_REQUEST_IDS[1:]
            ),
            client.post(
                traces,
                content=otlp_json([span(TRACE_ID, user_attributes)]),
                headers={"content-type": "application/json"},
            ),
            client.get("/healthz"),
        )
    assert [r.status_code for r in (refused_type, not_json, partial, ok, health)] == [415, 400, 200, 200, 200]
    assert refused_type.headers["x-request-id"] == TRACE_ID
    assert not_json.headers["x-request-id"] == "collector-req.42_a"
    ids = [r.headers["x-request-id"] for r in (partial, *unsafe, ok, health)]
    assert all(NEW_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)

    records = json_records(log)
    assert records_of(records, TRACE_ID) == [
        ("WARNING", "refused OTLP request: 415 unsupported content-type")
    ]
    assert records_of(records, "collector-req.42_a") == [
        ("WARNING", "refused OTLP request: 400 body is not JSON")
    ]
    assert records_of(records, partial.headers["x-request-id"]) == [
        ("WARNING", "rejected 1 of 2 spans: invalid trace_id")
    ]
    for response in unsafe:
        assert response.status_code == 415
        assert records_of(records, response.headers["x-request-id"]) == [
            ("WARNING", "refused OTLP request: 415 unsupported content-type")
        ]
    assert records_of(records, ok.headers["x-request-id"]) == []  # quiet when all is well
    assert_no_user_values(log, RAW_ID, EMAIL, *UNSAFE_REQUEST_IDS[:3])


async def test_api_records_carry_the_request_id(api_log: tuple[str, Path], migrated: Settings) -> None:
    url, log = api_log
    overview = "/api/analytics/learning/overview"
    learner = bearer(token(migrated, RAW_ID))
    other = Pseudonymizer.from_settings(migrated).pseudonymize(OTHER_RAW_ID)
    own = Pseudonymizer.from_settings(migrated).pseudonymize(RAW_ID)
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        no_token, forbidden, invalid, track, ok, unrouted, *unsafe = await asyncio.gather(
            client.get(overview, headers={"traceparent": TRACEPARENT}),
            client.get(
                overview, params={"subject": other}, headers={**learner, "x-request-id": "proxy-req-0002"}
            ),
            client.get(
                overview,
                params={"days": "many", "email": EMAIL, "note": RAW_ID},
                headers={**learner, "x-request-id": EMAIL},
            ),
            client.post(
                "/api/analytics/events/track",
                json={"events": [{"type": f"t-{RAW_ID}", "data": {"email": EMAIL}}]},
                headers=learner,
            ),
            client.get(overview, headers=learner),
            client.get(f"/users/{RAW_ID}/{EMAIL}", headers=learner),
            *(client.get(overview, headers={"x-request-id": value}) for value in UNSAFE_REQUEST_IDS[1:]),
        )
    assert [r.status_code for r in (no_token, forbidden, invalid, track, ok, unrouted)] == [
        401,
        403,
        422,
        202,
        200,
        404,
    ]
    assert no_token.headers["x-request-id"] == TRACE_ID
    assert forbidden.headers["x-request-id"] == "proxy-req-0002"
    ids = [r.headers["x-request-id"] for r in (invalid, track, ok, unrouted, *unsafe)]
    assert all(NEW_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)

    records = json_records(log)
    assert records_of(records, TRACE_ID) == [("INFO", f"refused {overview}: 401 missing_token")]
    assert records_of(records, "proxy-req-0002") == [("INFO", f"refused {overview}: 403 subject_forbidden")]
    assert records_of(records, invalid.headers["x-request-id"]) == [
        ("INFO", f"refused {overview}: 422 validation_error (3 field errors)")
    ]
    assert records_of(records, track.headers["x-request-id"]) == [
        ("INFO", "events/track rejected 1 of 1 items")
    ]
    for response in unsafe:
        assert response.status_code == 401
        assert records_of(records, response.headers["x-request-id"]) == [
            ("INFO", f"refused {overview}: 401 missing_token")
        ]
    assert records_of(records, ok.headers["x-request-id"]) == []  # quiet when all is well
    assert records_of(records, unrouted.headers["x-request-id"]) == []  # 404s off any route: DEBUG
    assert_no_user_values(log, RAW_ID, EMAIL, own, other, *UNSAFE_REQUEST_IDS[:3])


def test_records_outside_a_request_have_no_correlation_id(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", logging.INFO)
    try:
        logging.getLogger("studyin_analytics.test").info("start-up")
    finally:
        configure_logging("text", logging.WARNING)
    (record,) = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert "correlation_id" not in record
