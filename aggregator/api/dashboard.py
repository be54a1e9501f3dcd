"""The live dashboard: a page served by the query API, and its live feed.

* ``GET /dashboard`` serves a static page (no data in it) and ``/dashboard/static/*`` its
  script, styles and the vendored uPlot charting library: no CDN, so it works offline.
  The page asks for a bearer token and reads everything through the authenticated API.
* ``GET /api/analytics/live`` is a Server-Sent Events feed fed from the Redis bus's live
  tail, behind the same authentication. A learner receives only their own events (types,
  times and non-identifying fields); staff receive aggregated rates (events per second by
  type), never individual events. All feeds of a process share one tail reader
  (:class:`.live.LiveHub`), are capped per user and in total, and end when the token expires.
"""

# No postponed annotations here: FastAPI must evaluate the route's Annotated dependency,
# which names a closure variable.
import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict

from ...exporter import bus
from ...instrumentation import semconv
from . import audit
from .auth import Principal, unauthorized
from .live import LiveHub, Subscription

STATIC_DIR = Path(__file__).with_name("static")
LIVE_PATH = "/api/analytics/live"
HEARTBEAT_S = 15.0
RATE_INTERVAL_S = 1.0

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
    subscription: Subscription, *, stop_after_s: float | None = None, clock: Callable[[], float] = time.time
) -> AsyncIterator[bytes]:
    """The SSE byte stream of one feed (see the module docstring for what each role gets).

    It ends with an ``end`` event when the caller's token expires (``reason: token_expired``) or
    the shared tail reader stops (``reason: bus_unavailable``); browsers then reconnect, and an
    expired token gets its ``401``.
    """
    caller = subscription.principal
    started = last_beat = last_rate = time.monotonic()
    counts: Counter[str] = Counter()
    yield _sse("hello", {"role": "staff" if caller.is_staff else "learner", "expires_at": caller.expires_at})
    while stop_after_s is None or time.monotonic() - started < stop_after_s:
        if caller.expires_at is not None and clock() >= caller.expires_at:
            yield _sse("end", {"reason": "token_expired"})
            return
        try:
            event = await asyncio.wait_for(subscription.queue.get(), timeout=RATE_INTERVAL_S / 4)
        except TimeoutError:
            event = None
        else:
            if event is None:  # the reader failed: say so instead of a silent, empty feed
                yield _sse("end", {"reason": "bus_unavailable"})
                return
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


class _FeedResponse(StreamingResponse):
    """A feed's response: its slot is freed however the response ends (or if it never starts)."""

    def __init__(self, hub: LiveHub, subscription: Subscription) -> None:
        super().__init__(
            live_feed(subscription),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._hub, self._subscription = hub, subscription

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._hub.unsubscribe(self._subscription)


class LiveParams(BaseModel):
    """The feed takes no parameters; any is refused (``422``), like on every other endpoint."""

    model_config = ConfigDict(extra="forbid")


DASHBOARD_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",  # the page's script and the vendored uPlot: no inline script, no eval
        "style-src 'self'",  # the two style sheets; uPlot styles through the CSSOM, which CSP allows
        "img-src 'self' data:",
        "connect-src 'self'",  # the API and the live feed
        "base-uri 'none'",
        "form-action 'none'",  # the token form is handled by the script, never submitted
        "frame-ancestors 'none'",
    )
)
"""The page loads only its own files and talks only to this server: a script injected into it
could neither run inline nor send the token anywhere else."""
API_CSP = "default-src 'none'; frame-ancestors 'none'"
"""JSON and event streams load nothing and are never framed."""
_UNPOLICED_PATHS = ("/docs", "/redoc")
"""FastAPI's interactive docs load their UI from a CDN with inline script: framing is refused,
the rest of the policy is theirs."""
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeaders:
    """Adds the browser-side defences to every response (unless the route set its own).

    ``/dashboard`` handles bearer tokens: it must not be framed (clickjacking), sniffed into
    another type, leak its URL as a referrer, or run any script but its own.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == "/dashboard" or path.startswith("/dashboard/"):
            policy = DASHBOARD_CSP
        elif path.startswith(_UNPOLICED_PATHS):
            policy = "frame-ancestors 'none'"
        else:
            policy = API_CSP
        added = (*_ALWAYS, (b"content-security-policy", policy.encode()))

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in added if name not in present]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_dashboard(app: FastAPI, caller_dependency: Callable[..., Principal]) -> None:
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
            "second by type (event `rate`, once a second). Heartbeat comments every 15 s. The feed "
            "ends (event `end`) when the token expires. Feeds are capped per user and per server."
        ),
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}},
            429: {"description": "This user has live_feeds_per_user feeds open already"},
            503: {"description": "This server has live_feeds_total feeds open already"},
        },
    )
    async def live(
        request: Request,
        principal: Annotated[Principal, Depends(caller_dependency)],
        _params: Annotated[LiveParams, Query()],
    ) -> StreamingResponse:
        if principal.expires_at is not None and time.time() >= principal.expires_at:
            # Within the clock-skew leeway a request may still pass; a feed would end at once.
            raise unauthorized("token_expired", "token has expired")
        hub: LiveHub = request.app.state.live_hub
        subscription = hub.subscribe(principal)  # 429 / 503 beyond the caps
        try:
            await audit.record(
                request.app.state.pool,
                principal,
                LIVE_PATH,
                subject=None if principal.is_staff else principal.user_hash,
                scope="system" if principal.is_staff else "user",
            )
        except BaseException:
            hub.unsubscribe(subscription)
            raise
        return _FeedResponse(hub, subscription)

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.add_middleware(SecurityHeaders)
