"""Liveness: heartbeats, claims of dead members' pending entries, adoption of orphan shards.

A member says it is alive with heartbeat keys that expire after ``claim_idle_ms`` (one for
the member, one per shard of its own), refreshed three times per period while its loop
turns. Others take over only what belongs to a member whose heartbeat has expired: its
pending entries (claimed) and, with ``consumer_shards``, its shards (adopted). The age of
the entries decides nothing: after an outage every entry is old, and its owner may be
alive and busy with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import ResponseError

from ...exporter.bus import (
    member_key,
    owner_key,
)
from .reader import Reader
from .retry import describe, is_transient

CLAIM_INTERVAL_S = 5.0

_log = logging.getLogger(__name__)


class Liveness(Reader):
    """Heartbeat, ``claim_stale`` and ``adopt_orphans``."""

    def _mark_alive(self) -> None:
        """The consume loop turns: keep the heartbeat going (started with the first turn)."""
        self._alive_at = time.monotonic()
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_alive())

    def _grace_over(self) -> bool:
        """Up for ``claim_idle_ms``: members restarted with this one have had time to say they live."""
        return time.monotonic() - self._entered_at >= self.settings.claim_idle_ms / 1000

    async def heartbeat(self) -> None:
        """Say, for ``claim_idle_ms``, that this member is alive and reads its own shards."""
        assert self.redis is not None
        ttl = self.settings.claim_idle_ms
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(member_key(self.settings, self.consumer), "1", px=ttl)
        if len(self.own_streams) < len(self.streams):
            for stream in self.own_streams:
                pipe.set(owner_key(self.settings, stream), self.consumer, px=ttl)
        await pipe.execute()

    async def _keep_alive(self) -> None:
        """Heartbeat while the consume loop turns (a loop stuck for ``claim_idle_ms`` lets it lapse)."""
        period_s = self.settings.claim_idle_ms / 3000
        failing: str | None = None
        while not self._keeper_stopping:
            if time.monotonic() - self._alive_at < 2 * period_s:
                try:
                    await self.heartbeat()
                    failing = None
                except Exception as exc:  # transient (Redis away): the consume loop reports it
                    if not is_transient(exc) and describe(exc) != failing:
                        failing = describe(exc)  # e.g. an ACL refusing SET: the others would take over
                        _log.warning("heartbeat not written (%s): other members may take over", failing)
            if self._keeper_stopping:  # cancelled during the heartbeat, the cancellation swallowed
                return
            await asyncio.sleep(period_s)

    async def _alive(self, key: str) -> bool:
        assert self.redis is not None
        return bool(await self.redis.exists(key))

    async def claim_stale(self) -> int:
        """Claim entries pending on members whose heartbeat has expired; returns the count."""
        assert self.redis is not None
        if not self._grace_over():
            return 0
        claimed = 0
        alive: dict[str, bool] = {self.consumer: True}  # asked once per member and round
        for stream in self.streams:
            try:
                summary: Any = await self.redis.xpending(stream, self.group)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_groups()
                continue
            for holder in summary.get("consumers") or []:
                name = holder["name"].decode() if isinstance(holder["name"], bytes) else str(holder["name"])
                if name not in alive:
                    alive[name] = await self._alive(member_key(self.settings, name))
                if not alive[name]:
                    claimed += await self._claim_from(stream, name)
        if claimed:
            _log.info("claimed %d entries pending on dead consumers", claimed)
        return claimed

    async def _claim_from(self, stream: str, holder: str) -> int:
        """XCLAIM the entries of ``holder`` idle for ``claim_idle_ms`` on ``stream``, page by page.

        An entry trimmed from the stream while pending is dropped from the pending list by
        Redis 7 (``XCLAIM``); Redis 6.2 hands it over, and the pending read acknowledges it.
        """
        assert self.redis is not None
        claimed = 0
        cursor = "-"
        for _ in range(10_000):  # bounded: the cursor moves forward every page
            page: Any = await self.redis.xpending_range(
                stream,
                self.group,
                min=cursor,
                max="+",
                count=self.settings.batch_size,
                consumername=holder,
                idle=self.settings.claim_idle_ms,
            )
            if not page:
                break
            ids = [item["message_id"] for item in page]
            taken: Any = await self.redis.xclaim(
                stream, self.group, self.consumer, self.settings.claim_idle_ms, ids, justid=True
            )
            claimed += len(taken)
            last = ids[-1]
            cursor = f"({last.decode() if isinstance(last, bytes) else last}"
            if len(page) < self.settings.batch_size:
                break
        return claimed

    async def adopt_orphans(self) -> list[str]:
        """Read other members' shards too while no member that owns them is alive.

        With ``consumer_shards`` each member reads new entries from its own shards only, so
        members aggregate disjoint learners and never wait on each other's rollup rows. A shard
        whose members are all gone (no owner heartbeat for ``claim_idle_ms``) would stall: any
        member adopts it within ``claim_idle_ms`` plus the check interval, and gives it back as
        soon as one of its members says it is alive again. Returns the streams adopted now.
        """
        assert self.redis is not None
        if len(self.own_streams) == len(self.streams) or not self._grace_over():
            return []
        adopted: list[str] = []
        for stream in self.streams:
            if stream in self.own_streams:
                continue
            owned = await self._alive(owner_key(self.settings, stream))
            if owned and stream in self._adopted:
                _log.info("a member of %s is back: leaving it to it", stream)
                self._adopted.discard(stream)
            elif not owned and stream not in self._adopted:
                _log.warning(
                    "no live member reads %s (no heartbeat for %d ms): reading it too",
                    stream,
                    self.settings.claim_idle_ms,
                )
                self._adopted.add(stream)
                adopted.append(stream)
        return adopted
