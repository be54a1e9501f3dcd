"""The aggregator's health endpoint (Starlette on uvicorn, inside the aggregator's event loop).

* ``GET /healthz``: 200 while the process serves (liveness);
* ``GET /readyz``: 200 when Redis and PostgreSQL answer, else 503 (readiness);
* ``GET /status``: JSON with lag, pending entries, dead-letter length and totals;
* ``GET /metrics``: the self-telemetry in Prometheus text format (when given an
  :class:`~studyin_analytics.aggregator.consumer.telemetry.AggregatorTelemetry`), its gauges
  refreshed from one ``status()`` per scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .selftelemetry import SelfTelemetry


class StatusMetrics(Protocol):
    """What this server needs of a service's metrics: its telemetry, and a place for a fresh ``status()``."""

    telemetry: SelfTelemetry

    def observe_status(self, status: dict[str, Any]) -> None: ...


StatusFunction = Callable[[], Awaitable[dict[str, Any]]]


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: SIGTERM belongs to the aggregator, which stops us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(status: StatusFunction, metrics: StatusMetrics | None = None) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        current = await status()
        if metrics is not None:  # the probes keep the gauges fresh between scrapes too
            metrics.observe_status(current)
        ready = bool(current.get("healthy"))
        body = {"ready": ready, "redis": current.get("redis"), "postgres": current.get("postgres")}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def full_status(request: Request) -> JSONResponse:
        return JSONResponse(jsonable(await status()))

    async def prometheus(request: Request) -> Response:
        assert metrics is not None
        metrics.observe_status(await status())
        body, content_type = metrics.telemetry.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/status", full_status, methods=["GET"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", prometheus, methods=["GET"]))
    return Starlette(routes=routes)


def jsonable(value: Any) -> Any:
    """``status()`` may hold datetimes and the like: make it JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class HealthServer:
    """Serves ``status()`` (and ``metrics`` if given) on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self, status: StatusFunction, host: str, port: int, metrics: StatusMetrics | None = None
    ) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            health_app(status, metrics),
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # a bind failure surfaces here
                raise OSError(f"health endpoint on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, timeout=5)
        self._task = None
