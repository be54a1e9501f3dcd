"""The aggregator's health endpoint: a tiny HTTP/1.1 server on asyncio (no framework needed).

* ``GET /healthz``: 200 while the consume loop is alive (liveness);
* ``GET /readyz``: 200 when Redis and PostgreSQL answer, else 503 (readiness);
* ``GET /status``: JSON with lag, pending entries, dead-letter length and totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

_log = logging.getLogger(__name__)

StatusFunction = Callable[[], Awaitable[dict[str, Any]]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves ``status()`` over HTTP on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, status: StatusFunction, host: str, port: int) -> None:
        self._status = status
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while True:  # skip headers
                line = await asyncio.wait_for(reader.readline(), timeout=5)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request_line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            code, body = await self._route(method, path)
            payload = json.dumps(body, default=str).encode()
            writer.write(
                f"HTTP/1.1 {code} {_REASONS.get(code, 'OK')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        if method != "GET":
            return 405, {"error": "only GET"}
        if path == "/healthz":
            return 200, {"status": "ok"}
        if path in ("/readyz", "/status"):
            status = await self._status()
            if path == "/readyz":
                ready = bool(status.get("healthy"))
                return (200 if ready else 503), {
                    "ready": ready,
                    "redis": status.get("redis"),
                    "postgres": status.get("postgres"),
                }
            return 200, status
        return 404, {"error": "not found"}
