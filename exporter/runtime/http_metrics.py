"""``http.server.request.duration`` (and the request body size) of the services' HTTP servers.

Used by the gateway and the query API; attributes hold route templates, never raw paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractContextManager
from timeit import default_timer
from typing import Any

from opentelemetry.util.http import sanitize_method

from .selftelemetry import HTTP_BODY_SIZE, HTTP_DURATION, SelfTelemetry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _route_of(scope: Scope) -> str | None:
    """The matched route's template (Starlette puts the route in the scope); never the raw path."""
    path_format = getattr(scope.get("route"), "path_format", None)
    if path_format:
        return str(scope.get("root_path", "")) + str(path_format)
    return None


def _declared_length(scope: Scope, received: int) -> int:
    """``Content-Length`` as sent (a body rejected unread still counts), else the bytes read."""
    for key, raw in scope.get("headers") or ():
        if key == b"content-length":
            return int(raw) if raw.isdigit() else received
    return received


class HTTPServerMetrics:
    """ASGI middleware: ``http.server.request.duration`` (and optionally the body size) per request.

    Not the project's ``StudyInASGIMiddleware`` in metrics-only mode: that one names its histogram
    after ``OTEL_SEMCONV_STABILITY_OPT_IN`` (``http.server.duration`` in ms by default), and it
    marks the scope so that a second StudyIn middleware skips the request, which would silence the
    app's own instrumentation when an operator runs the API under ``opentelemetry-instrument``.
    ``on_response(status)`` lets a service count its own outcomes; ``during_request()`` (a context
    manager) runs around each request, e.g. to make the query API's telemetry current for it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        telemetry: SelfTelemetry,
        body_size: bool = False,
        on_response: Callable[[int], None] | None = None,
        during_request: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.app = app
        self.duration = telemetry.histogram(HTTP_DURATION)
        self.body_size = telemetry.histogram(HTTP_BODY_SIZE) if body_size else None
        self.on_response = on_response
        self.during_request = during_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = default_timer()
        status = 0
        received = 0
        error_type: str | None = None

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        context = self.during_request() if self.during_request is not None else contextlib.nullcontext()
        try:
            with context:
                await self.app(
                    scope, counting_receive if self.body_size is not None else receive, status_send
                )
        except BaseException as exc:
            error_type = type(exc).__qualname__
            raise
        finally:
            if status == 0:  # nothing went out: the server answers 500
                status = 500
            attributes: dict[str, Any] = {
                "http.request.method": sanitize_method(str(scope.get("method", ""))) or "_OTHER",
                "http.response.status_code": status,
            }
            route = _route_of(scope)
            if route:
                attributes["http.route"] = route
            if error_type is None and status >= 500:
                error_type = str(status)
            if error_type is not None:
                attributes["error.type"] = error_type
            self.duration.record(max(default_timer() - start, 0.0), attributes)
            if self.body_size is not None:
                self.body_size.record(_declared_length(scope, received), attributes)
            if self.on_response is not None:
                self.on_response(status)
