"""Correlation ids: which request or batch a log record belongs to.

:data:`correlation_id` holds the id of the unit of work being handled; the log formatters of
:mod:`studyin_analytics.exporter.runtime.logconfig` print it with every record. Set it with
:func:`correlated` around a batch, and with :class:`CorrelationIdMiddleware` (through
:func:`install`) around each HTTP request of the gateway and the query API.

A request's id is, in this order: the trace id of a well-formed W3C ``traceparent`` (so the
logs of every hop of one trace share an id); the caller's ``X-Request-ID`` if it is 1-64
characters of ``[A-Za-z0-9._-]`` (anything else could carry user values or forge log lines, and
is ignored); else a new random id. The response echoes it in ``X-Request-ID``.

Why this module lives in ``exporter/``: the gateway lives here and the layers depend one way
(``instrumentation`` <- ``exporter`` <- ``aggregator``), as for :mod:`.selftelemetry`.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
"""The id of the batch or request being handled (``None`` outside one); set it with :func:`correlated`."""

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?", re.DOTALL)
_ZERO_TRACE_ID = b"0" * 32
_ZERO_SPAN_ID = b"0" * 16


def new_correlation_id() -> str:
    """A new random id: 32 lowercase hex digits (128 bits, the shape of a trace id)."""
    return secrets.token_hex(16)


@contextmanager
def correlated(cid: str | None = None) -> Iterator[str]:
    """Tag the log records written inside the block with ``cid`` (a new id if ``None``).

    Yields the id in use and restores the previous one on exit, so blocks nest; tasks started
    inside the block inherit it (contextvars). ``cid`` is logged as given: build it from ids
    this code base made, never from user input, e.g. a batch's first stream entry::

        with correlated(f"batch-{entries[0].entry_id}"):
            ...
    """
    value = new_correlation_id() if cid is None else cid
    token = correlation_id.set(value)
    try:
        yield value
    finally:
        correlation_id.reset(token)


def trace_id_of(traceparent: bytes) -> str | None:
    """The trace id of a W3C ``traceparent`` header value, or ``None`` if it is not well-formed.

    Version ``00`` has exactly four fields; later versions may append fields (``-...``); version
    ``ff`` and all-zero trace or parent ids are invalid (W3C Trace Context, level 1).
    """
    match = _TRACEPARENT.fullmatch(traceparent.strip(b" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_SPAN_ID:
        return None
    return trace_id.decode("ascii")


def request_correlation_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The id of a request with ASGI ``headers`` (lowercase byte pairs): see the module docstring."""
    traceparent = request_id = None
    for name, value in headers:
        if name == b"traceparent":
            if traceparent is None:
                traceparent = value
        elif name == b"x-request-id" and request_id is None:
            request_id = value
    if traceparent is not None:
        trace_id = trace_id_of(traceparent)
        if trace_id is not None:
            return trace_id
    if request_id is not None and _REQUEST_ID.fullmatch(request_id):
        return request_id.decode("ascii")
    return new_correlation_id()


class CorrelationIdMiddleware:
    """Pure ASGI middleware: :data:`correlation_id` is the request's id while it is handled.

    One pass over the headers, a context variable set and reset, one response header: a few
    microseconds, so it fits the gateway's hot path. Other scope types (lifespan) pass through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = request_correlation_id(scope.get("headers") or ())
        header = (b"x-request-id", cid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = correlation_id.set(cid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)


def install(app: Starlette) -> None:
    """Make :class:`CorrelationIdMiddleware` the outermost layer of ``app``.

    Outside Starlette's ``ServerErrorMiddleware`` (which ``add_middleware`` cannot reach), so an
    unhandled error's log record and its ``500`` response carry the request's id too.
    """
    build = app.build_middleware_stack

    def build_with_correlation() -> ASGIApp:
        return CorrelationIdMiddleware(build())

    app.build_middleware_stack = build_with_correlation  # type: ignore[method-assign]


__all__ = [
    "REQUEST_ID_HEADER",
    "CorrelationIdMiddleware",
    "correlated",
    "correlation_id",
    "install",
    "new_correlation_id",
    "request_correlation_id",
    "trace_id_of",
]
