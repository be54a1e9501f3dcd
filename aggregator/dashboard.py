"""The live dashboard: a page served by the query API, and its live feed.

* ``GET /dashboard`` serves a static page (no data in it) and ``/dashboard/static/*`` its
  script, styles and the vendored uPlot charting library: no CDN, so it works offline.
  The page asks for a bearer token and reads everything through the authenticated API.
* ``GET /api/analytics/live`` is a Server-Sent Events feed fed from the Redis bus's live
  tail, behind the same authentication. A learner receives only their own events (types,
  times and non-identifying fields); staff receive aggregated rates (events per second by
  type), never individual events.
"""

# No postponed annotations here: FastAPI must evaluate the route's Annotated dependency,
# which names a closure variable.
import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..exporter import bus
from ..instrumentation import semconv
from ..instrumentation.settings import Settings
from . import audit
from .auth import Principal

STATIC_DIR = Path(__file__).with_name("static")
LIVE_PATH = "/api/analytics/live"
HEARTBEAT_S = 15.0
RATE_INTERVAL_S = 1.0
_QUEUE_BOUND = 1000  # a slow browser loses live items rather than growing memory

# Fields a learner's own live item may show: what happened, never free text or other users.
_LIVE_FIELDS = frozenset(
    {
        "material_id",
        "material_type",
        "xp_amount",
        "xp_reason",
        "level",
        "achievement_id",
        "streak_days",
        "rating",
    }
)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _learner_item(event: bus.BusEvent) -> dict[str, Any]:
    fields = {}
    for key, value in event.attributes.items():
        name = semconv.ATTRIBUTE_FIELDS.get(key)
        if name in _LIVE_FIELDS:
            fields[name] = value
    return {"type": event.event_type, "time": event.time.isoformat(), "fields": fields}


async def live_feed(
    client: aioredis.Redis, settings: Settings, caller: Principal, *, stop_after_s: float | None = None
) -> AsyncIterator[bytes]:
    """The SSE byte stream for ``caller`` (see the module docstring for what each role gets)."""
    queue: asyncio.Queue[bus.BusEvent] = asyncio.Queue(maxsize=_QUEUE_BOUND)
    own = set(caller.user_hashes)

    async def pump() -> None:
        async for event in bus.tail(client, settings, block_ms=1000):
            if not caller.is_staff and event.user_hash not in own:
                continue
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    reader = asyncio.create_task(pump())
    started = last_beat = last_rate = time.monotonic()
    counts: Counter[str] = Counter()
    try:
        yield _sse("hello", {"role": "staff" if caller.is_staff else "learner"})
        while stop_after_s is None or time.monotonic() - started < stop_after_s:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=RATE_INTERVAL_S / 4)
            except TimeoutError:
                event = None
            if reader.done():
                reader.result()  # surfaces a Redis failure instead of a silent, empty feed
            now = time.monotonic()
            if event is not None:
                if caller.is_staff:
                    counts[event.event_type] += 1
                else:
                    yield _sse("activity", _learner_item(event))
            if caller.is_staff and now - last_rate >= RATE_INTERVAL_S:
                elapsed = now - last_rate
                yield _sse(
                    "rate",
                    {
                        "time": time.time(),
                        "events_per_s": sum(counts.values()) / elapsed,
                        "by_type": {k: v / elapsed for k, v in sorted(counts.items())},
                    },
                )
                counts.clear()
                last_rate = now
            if now - last_beat >= HEARTBEAT_S:
                yield b": keep-alive\n\n"
                last_beat = now
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


def mount_dashboard(app: FastAPI, settings: Settings, caller_dependency: Callable[..., Principal]) -> None:
    """Add the page, its static files and the live feed to the query API ``app``.

    ``caller_dependency`` is the API's bearer-token dependency, so the feed has exactly the
    API's authentication.
    """
    router = APIRouter()

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html")

    @router.get(
        LIVE_PATH,
        tags=["live"],
        summary="Live feed (Server-Sent Events)",
        description=(
            "Learners: their own events as they reach the bus (event `activity`). Staff: events per "
            "second by type (event `rate`, once a second). Heartbeat comments every 15 s."
        ),
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def live(
        request: Request, principal: Annotated[Principal, Depends(caller_dependency)]
    ) -> StreamingResponse:
        await audit.record(
            request.app.state.pool,
            principal,
            LIVE_PATH,
            subject=None if principal.is_staff else principal.user_hash,
            scope="system" if principal.is_staff else "user",
        )
        return StreamingResponse(
            live_feed(request.app.state.redis, settings, principal),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
