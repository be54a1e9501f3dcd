"""How the OTLP gateway and the query API are served: uvicorn with read deadlines.

uvicorn bounds how long an idle keep-alive connection stays open, but not how long a client
may take to send a request: a client that connects and sends nothing, or one header byte now
and then, or a body one byte at a time, holds its connection (and, for a body, a request
task) indefinitely; a few hundred of them hold every connection the server will take.

* **Headers**: :class:`HeaderDeadlineProtocol` closes a connection whose request line and
  headers are not complete ``http_header_timeout_s`` after it opened or after its previous
  response (uvicorn's h11 protocol with a timer; nothing is sent, the client never asked).
* **Body**: :class:`BodyReadDeadline` (ASGI) answers ``408`` and closes the connection when the
  body is not complete ``http_body_timeout_s`` after the request's headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ...instrumentation.settings import Settings

_log = logging.getLogger(__name__)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections whose request headers come too slowly."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_headers()

    def _await_headers(self) -> None:
        """Arm the deadline while the next request's headers are incomplete (disarm once they are)."""
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            _log.info("closed a connection whose request headers took over %gs", self.header_timeout_s)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        self._await_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_headers()  # a kept-alive connection: the next request's headers start now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


class BodyReadDeadline:
    """ASGI middleware: a request body not complete ``timeout_s`` after the headers gets ``408``.

    To the app, a client that misses the deadline has gone (``http.disconnect``), whatever it
    makes of that (an error response, an exception): the client gets the ``408`` and the
    connection is closed. Only reads of the body are bounded: once it is complete, an app (a
    live feed) may wait on ``receive`` for the client's disconnect as long as it likes.
    """

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = timed_out = response_started = False

        async def timed_receive() -> Any:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()
            if timed_out:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal response_started
            if timed_out:
                return  # what the app answers a client it thinks is gone: the 408 goes instead
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out:
                raise
        if timed_out:
            _log.info("refused %s: 408 body_timeout (over %gs)", scope.get("path", "?"), self.timeout_s)
            if not response_started:
                await _send_408(send, self.timeout_s)


async def _send_408(send: Any, timeout_s: float) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Request Timeout",
            "status": 408,
            "detail": f"the request body was not complete within {timeout_s:g} s",
            "code": "body_timeout",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 408,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def server_config(app: Any, settings: Settings, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of a service of ours: ``app`` behind both read deadlines.

    ``options`` are uvicorn's (log settings); the services pass ``log_config=None`` so uvicorn's
    records go through ``configure_logging``.
    """
    protocol = type(
        "HeaderDeadlineProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout_s": settings.http_header_timeout_s},
    )
    return uvicorn.Config(
        BodyReadDeadline(app, settings.http_body_timeout_s), host=host, port=port, http=protocol, **options
    )


def serve(app: Any, settings: Settings, host: str, port: int) -> None:
    """Run ``app`` until SIGINT/SIGTERM (the CLI's ``api`` and ``gateway`` commands)."""
    config = server_config(app, settings, host, port, log_config=None, log_level=None, access_log=False)
    uvicorn.Server(config).run()
