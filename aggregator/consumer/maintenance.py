"""Partition maintenance: daily raw partitions ahead, those past raw retention dropped."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

from ...exporter.admission import oldest_day
from ..storage.schema import (
    drop_expired_partitions,
    ensure_partitions,
    partition_days_ahead,
)
from .member import Member

MAINTENANCE_INTERVAL_S = 3600.0


class PartitionsMissing(Exception):
    """Events of a round fall on days without a raw partition (created outside any round)."""

    def __init__(self, days: list[date]) -> None:
        super().__init__(f"no raw partition for {', '.join(map(str, days))}")


_log = logging.getLogger(__name__)


class Maintenance(Member):
    """Creates the raw partitions a commit needs and drops expired ones (hourly)."""

    async def _ensure_partitions(self, conn: Any, days: set[date]) -> None:
        """Partitions for ``days``, inside the window of raw retention (see schema.ensure_partitions).

        One day of slack on the old side: events screened just before midnight UTC may be
        committed just after it, when their day has left raw retention (maintenance drops it).
        """
        oldest = oldest_day(self.settings.raw_retention_days + 1)
        await ensure_partitions(conn, days, self._partitions, oldest=oldest)

    async def maintain(self) -> list[str]:
        """Create daily partitions ahead and drop those past raw retention."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await self._ensure_partitions(conn, partition_days_ahead(datetime.now(UTC).date()))
            dropped = await drop_expired_partitions(conn, self.settings.raw_retention_days, self._partitions)
        if dropped:
            _log.info("dropped raw partitions past retention: %s", ", ".join(dropped))
        return dropped
