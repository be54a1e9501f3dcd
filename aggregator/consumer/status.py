"""Health and lag of a member and its group (what the CLI and the HTTP endpoint show)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ...exporter.bus import (
    GroupLag,
    dead_letter_keys,
    group_lag,
)
from .maintenance import Maintenance
from .retry import describe

_log = logging.getLogger(__name__)


class Status(Maintenance):
    """Lag (one function: exporter.bus.group_lag) and health of this member."""

    async def _group_lags(self, streams: Sequence[str]) -> list[GroupLag]:
        """Where the group stands on each of ``streams`` (a stream it lacks: everything waits)."""
        assert self.redis is not None
        out: list[GroupLag] = []
        for stream in streams:
            lag = await group_lag(self.redis, stream, self.group)
            if lag is None:
                waiting = int(await self.redis.xlen(stream))
                lag = GroupLag(self.group, 0, 0, "0-0", waiting, True, False, None)
            out.append(lag)
        return out

    async def lag(self, streams: Sequence[str] | None = None) -> int:
        """Entries not yet acknowledged by the group (unread plus pending), over ``streams`` (all)."""
        lags = await self._group_lags(self.streams if streams is None else streams)
        return sum(lag.behind for lag in lags)

    async def status(self) -> dict[str, Any]:
        """Health and lag of this member and its group (what the CLI and HTTP endpoint show)."""
        info: dict[str, Any] = {
            "consumer": self.consumer,
            "group": self.group,
            "streams": self.streams,
            "own_streams": self.own_streams,
            "adopted_streams": sorted(self._adopted),
            "uptime_s": round(time.time() - self.started_at, 3),
            "last_batch_at": self.last_batch_at,
            "last_error": self.last_error,
            "totals": asdict(self.totals),
        }
        try:
            assert self.redis is not None
            lags = await self._group_lags(self.streams)
            info["lag"] = sum(lag.behind for lag in lags)
            info["pending"] = sum(lag.pending for lag in lags)
            info["dead_letter_length"] = sum(
                [int(await self.redis.xlen(key)) for key in dead_letter_keys(self.settings)]
            )
            info["redis"] = "ok"
        except Exception as exc:  # report, never raise, from a health probe
            info["redis"] = describe(exc)
        try:
            if self.pool is None:
                raise ConnectionError("no pool")
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), timeout=2)
            info["postgres"] = "ok"
        except Exception as exc:
            info["postgres"] = describe(exc)
        info["healthy"] = info["redis"] == "ok" and info["postgres"] == "ok"
        return info
