"""Drivers of the simulated backend: how a simulated student's requests reach the ASGI app.

``HttpxClient`` goes through ``httpx.ASGITransport`` (what a test client does); ``AsgiClient``
calls the ASGI app directly (a fraction of the client-side cost, for the benchmark).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any, Protocol

import httpx


class Client(Protocol):
    async def request(self, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
        """Send one request; returns the status and the decoded JSON body (or ``None``)."""
        ...


class HttpxClient:
    """Through ``httpx.ASGITransport`` (what a test client does)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def request(self, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = await self._client.request(method, path, headers=headers, json=body)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None


class AsgiClient:
    """Calls the ASGI app directly: one scope, one body message, the response collected."""

    def __init__(self, app: Any, host: str = "studyin.test") -> None:
        self._app = app
        self._host = host.encode()

    async def request(self, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [(b"host", self._host), (b"user-agent", b"studyin-sim/1")]
        if body is not None:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("studyin.test", 80),
        }
        sent = False
        status = 500
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.Event().wait()  # a disconnect never comes
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self._app(scope, receive, send)
        except Exception:  # the app re-raises after its 500 response, like a server would log it
            status = 500
        data = b"".join(chunks)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None
