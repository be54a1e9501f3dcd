"""One reader of the bus's live tail for every live feed of the query API process.

Each ``/api/analytics/live`` feed used to hold its own blocking ``XREAD`` on the API's Redis
client: a hundred feeds from one learner exhausted the pool and took readiness down with it.
Now one background task reads the tail on a Redis client of its own and hands every event to
the subscribed feeds' bounded queues; feeds are capped per user and in total
(``live_feeds_per_user``, ``live_feeds_total``), and the reader runs only while a feed is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from ...exporter import bus
from ...exporter.connection import AsyncClient, async_client
from ...instrumentation.settings import Settings
from .auth import ApiProblem, Principal

_log = logging.getLogger(__name__)

QUEUE_BOUND = 1000
"""Events one feed may have waiting; a slow browser loses live items rather than growing memory."""
BLOCK_MS = 1000
RETRY_AFTER_S = 5


class TailFailed(RuntimeError):
    """The shared tail reader stopped (Redis unreachable): the feeds end, browsers reconnect."""


@dataclass(eq=False)
class Subscription:
    """One open feed: its caller and the events for it (``None``: the reader failed)."""

    principal: Principal
    queue: asyncio.Queue[bus.BusEvent | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_BOUND))

    def wants(self, event: bus.BusEvent) -> bool:
        """Staff count every event; a learner sees their own pseudonyms' events only."""
        return self.principal.is_staff or event.user_hash in self.principal.user_hashes

    def offer(self, event: bus.BusEvent | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # drop the oldest
        self.queue.put_nowait(event)


class LiveHub:
    """The feeds of one API process and the one task that reads the bus tail for them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._subscriptions: set[Subscription] = set()
        self._per_user: Counter[str] = Counter()
        self._client: AsyncClient | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def open_feeds(self) -> int:
        return len(self._subscriptions)

    @property
    def reading(self) -> bool:
        """The tail reader is running (it does while a feed is open)."""
        return self._reader is not None and not self._reader.done()

    def subscribe(self, principal: Principal) -> Subscription:
        """A slot for a new feed of ``principal``, or ``429``/``503`` when a cap is reached."""
        if self._per_user[principal.user_hash] >= self._settings.live_feeds_per_user:
            raise ApiProblem(
                429,
                "too_many_live_feeds",
                f"at most {self._settings.live_feeds_per_user} live feeds per user are open at once",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if len(self._subscriptions) >= self._settings.live_feeds_total:
            raise ApiProblem(
                503,
                "live_feeds_exhausted",
                "this server has no free live feed; try again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        subscription = Subscription(principal)
        self._subscriptions.add(subscription)
        self._per_user[principal.user_hash] += 1
        if not self.reading:
            self._reader = asyncio.create_task(self._read(), name="live-tail")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Free the feed's slot (safe to call twice); the reader stops with the last feed."""
        if subscription not in self._subscriptions:
            return
        self._subscriptions.discard(subscription)
        user = subscription.principal.user_hash
        self._per_user[user] -= 1
        if self._per_user[user] <= 0:
            del self._per_user[user]
        if not self._subscriptions and self._reader is not None:
            self._reader.cancel()
            self._reader = None  # a feed opened meanwhile starts a new reader

    async def _read(self) -> None:
        if self._client is None:
            # Its own client: the blocking read never holds a connection of the API's requests
            # or of its health checks.
            self._client = async_client(
                self._settings, socket_timeout=BLOCK_MS / 1000 + 5, socket_connect_timeout=2
            )
        try:
            async for event in bus.tail(self._client, self._settings, block_ms=BLOCK_MS):
                for subscription in tuple(self._subscriptions):
                    if subscription.wants(event):
                        subscription.offer(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis went away: end every feed (browsers reconnect)
            _log.warning("live tail stopped (%s): closing %d feeds", type(exc).__name__, self.open_feeds)
            for subscription in tuple(self._subscriptions):
                subscription.offer(None)

    async def close(self) -> None:
        """Stop the reader and close its client (the app's shutdown)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._client is not None:
            await self._client.aclose()
            self._client = None
