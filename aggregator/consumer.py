"""The aggregator: a Redis consumer-group member that rolls the bus into PostgreSQL.

One batch = read entries, decode, map to event rows, then in ONE transaction insert the raw
rows idempotently and update the rollups from the rows that were new; acknowledge after
the commit. A crash before the commit leaves the entries pending (they are re-read); a
crash after the commit but before the acknowledgement re-reads entries whose events are
already in the table, and the idempotent insert turns them into no-ops. Hence exactly-once
effect on every rollup.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..exporter import wire
from ..exporter.bus import dead_letter_key, stream_keys
from ..instrumentation.settings import Settings, require
from . import rollups
from .db import create_pool
from .mapping import EventRow, rows_from_span
from .schema import ensure_partitions

_log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
ReadResponse = Any  # [[stream, [Entry, ...]], ...] as redis-py returns it for RESP2


@dataclass
class BatchResult:
    entries: int = 0
    events_seen: int = 0
    events_inserted: int = 0
    dead_lettered: int = 0


class Aggregator:
    """Consumes the bus into the analytics tables. Use as ``async with Aggregator(settings) as agg``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams = stream_keys(settings)
        self.group = settings.consumer_group
        self.consumer = settings.consumer_name
        self.redis: aioredis.Redis | None = None
        self.pool: asyncpg.Pool | None = None
        self._partitions: set[date] = set()
        self.totals = BatchResult()

    async def __aenter__(self) -> Aggregator:
        self.redis = aioredis.Redis.from_url(require(self.settings.redis_url, "redis_url"))
        self.pool = await create_pool(self.settings, min_size=1, max_size=2)
        await self.ensure_groups()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def ensure_groups(self) -> None:
        assert self.redis is not None
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def process_batch(self, block_ms: int | None = 1000) -> BatchResult:
        """Read, roll up and acknowledge one batch (pending entries of this consumer first)."""
        assert self.redis is not None and self.pool is not None
        result = BatchResult()
        # Own pending entries (from a previous life of this consumer) come before new ones.
        response: ReadResponse = await self.redis.xreadgroup(
            self.group, self.consumer, dict.fromkeys(self.streams, "0"), count=self.settings.batch_size
        )
        if not any(entries for _, entries in response):
            response = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(self.streams, ">"),
                count=self.settings.batch_size,
                block=block_ms,
            )
        for stream, entries in response:
            if entries:
                await self._process_entries(stream.decode(), entries, result)
        self._add_totals(result)
        return result

    async def _process_entries(self, stream: str, entries: list[Entry], result: BatchResult) -> None:
        assert self.redis is not None and self.pool is not None
        rows: list[EventRow] = []
        good_ids: list[bytes] = []
        for entry_id, fields in entries:
            try:
                records = wire.decode_entry(fields)
            except wire.WireFormatError as exc:
                await self._dead_letter(stream, entry_id, fields, str(exc))
                result.dead_lettered += 1
                continue
            good_ids.append(entry_id)
            for record in records:
                rows.extend(rows_from_span(record))
        result.entries += len(entries)
        result.events_seen += len(rows)
        rows = rollups.unique_events(rows)
        if rows:
            async with self.pool.acquire() as conn:
                await ensure_partitions(conn, {r.occurred_at.date() for r in rows}, self._partitions)
                async with conn.transaction():
                    new_rows = await rollups.insert_events(conn, rows)
                    await rollups.apply(conn, new_rows)
            result.events_inserted += len(new_rows)
        if good_ids:
            await self.redis.xack(stream, self.group, *good_ids)

    async def _dead_letter(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], error: str
    ) -> None:
        assert self.redis is not None
        _log.warning("dead-lettering entry %s of %s: %s", entry_id.decode(), stream, error)
        dead: dict[Any, Any] = {
            **fields,
            b"error": error.encode(),
            b"source_stream": stream.encode(),
            b"source_id": entry_id,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(dead_letter_key(self.settings), dead)
            pipe.xack(stream, self.group, entry_id)
            await pipe.execute()

    def _add_totals(self, result: BatchResult) -> None:
        self.totals.entries += result.entries
        self.totals.events_seen += result.events_seen
        self.totals.events_inserted += result.events_inserted
        self.totals.dead_lettered += result.dead_lettered

    async def lag(self) -> int:
        """Entries not yet acknowledged by the group (unread plus pending), over all streams."""
        assert self.redis is not None
        total = 0
        for stream in self.streams:
            pending = await self.redis.xpending(stream, self.group)
            total += int(pending["pending"])
            groups = await self.redis.xinfo_groups(stream)
            for group in groups:
                if group["name"].decode() == self.group:
                    lag = group.get("lag")
                    if lag is None:  # Redis < 7: count what lies after the last delivered id
                        last = group["last-delivered-id"]
                        after = await self.redis.xrange(stream, min=f"({last.decode()}", count=100_000)
                        lag = len(after or [])
                    total += int(lag)
        return total

    async def drain(self, timeout_s: float = 30.0) -> BatchResult:
        """Process until nothing is left to read (for the demo and tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            result = await self.process_batch(block_ms=50)
            if result.entries == 0 and await self.lag() == 0:
                return self.totals
        raise TimeoutError(f"bus not drained after {timeout_s}s")

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until ``stop`` is set."""
        while not stop.is_set():
            await self.process_batch(block_ms=500)
