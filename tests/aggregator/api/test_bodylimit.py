"""Server-free unit tests of the query API's request-body limit (aggregator/api/bodylimit.py)."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from studyin_analytics.aggregator.api.bodylimit import BodySizeLimit

Message = MutableMapping[str, Any]


async def _echo(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """An app that answers 200 with the body it read."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _call(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]], method: str = "POST"
) -> list[Message]:
    scope = {"type": "http", "method": method, "path": "/api/analytics/events/track", "headers": headers}
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await BodySizeLimit(_echo, max_bytes=10)(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [
        ([b"12345", b"67890"], []),  # exactly the limit, no Content-Length
        ([b"1234567890"], [(b"content-length", b"10")]),
    ],
)
async def test_bodies_up_to_the_limit_reach_the_app_whole(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> None:
    sent = await _call(chunks, headers)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"".join(chunks)


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [
        ([b"123456", b"789012"], []),  # streamed past the limit, no Content-Length
        ([b""], [(b"content-length", b"11")]),  # declared past the limit: refused unread
        ([b"12345678901"], [(b"content-length", b"3")]),  # a Content-Length that lies
    ],
)
async def test_larger_bodies_get_413_problem_json(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> None:
    sent = await _call(chunks, headers)
    assert sent[0]["status"] == 413
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    problem = json.loads(sent[1]["body"])
    assert problem["code"] == "body_too_large" and problem["status"] == 413


async def test_reads_are_not_limited() -> None:
    sent = await _call([b"x" * 100], [], method="GET")
    assert sent[0]["status"] == 200
