"""A request-body limit for the query API: larger bodies get ``413`` problem+json."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .problems import problem_response

_log = logging.getLogger("studyin_analytics.aggregator.api.app")

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def _declared_length(scope: MutableMapping[str, Any]) -> int | None:
    """The largest ``Content-Length`` the client declared (-1 if unreadable), or None."""
    declared: int | None = None
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = -1
            declared = length if declared is None else max(declared, length)
    return declared


class BodySizeLimit:
    """Reads at most ``max_bytes`` of a request body; larger bodies get ``413`` problem+json.

    The body is buffered (it is at most ``max_bytes``) and replayed to the app, so the limit
    holds whether or not the client sent ``Content-Length``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        _log.info("refused request: 413 body_too_large (limit %d bytes)", self.max_bytes)
        response = problem_response(
            413,
            "body_too_large",
            f"request body exceeds {self.max_bytes} bytes",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        await self.app(scope, replay, send)
