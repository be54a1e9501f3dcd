"""The bus side of a member: read (own pending, then new), acknowledge, dead-letter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...exporter import wire
from ...exporter.bus import dead_letter_key
from .batches import ReadResponse
from .mapping import (
    SERVER_SPAN_INDEX,
    Refusal,
    dumps_json,
    locate,
)
from .retry import Backoff, describe
from .status import Status

TARGET_EVENTS_PER_BATCH = 10_000
"""Reads are sized to about this many events (entries carry 1 to 512+ spans), never more than
``batch_size`` entries: memory stays bounded however far behind the group is; a round spans
several reads."""
CLUSTER_BLOCK_MS = 50
"""On a cluster each shard stream is read with its own blocking XREADGROUP and the batch waits
for all of them: an entry arriving on one shard waits at most this long for the others' reads."""
DEAD_LETTER_MAX_LEN = 100_000

_log = logging.getLogger(__name__)


class Reader(Status):
    """XREADGROUP, XPENDING delivery counts, XACK and the dead-letter stream."""

    def reading_streams(self) -> list[str]:
        """Streams this member reads new entries from: its own shards and any adopted ones."""
        return [s for s in self.streams if s in self._adopted or s in self.own_streams]

    def read_count(self) -> int:
        """Entries per read: about TARGET_EVENTS_PER_BATCH events, at most ``batch_size``."""
        return max(1, min(self.settings.batch_size, int(TARGET_EVENTS_PER_BATCH / self._events_per_entry)))

    async def _read(self, ids: str, count: int, block_ms: int | None) -> ReadResponse:
        assert self.redis is not None
        # Own pending entries ("0") may sit on any stream (claimed ones); new ones (">") are
        # read from this member's shards only.
        streams = self.streams if ids == "0" else self.reading_streams()
        if self.settings.redis_cluster:
            # One XREADGROUP per stream (several keys in one call would be cross-slot), all at
            # once; block only when no stream has anything, so a busy shard never waits on an
            # idle one.
            response = await self._read_each(streams, ids, count, None)
            if block_ms is not None and not any(entries for _, entries in response):
                response = await self._read_each(streams, ids, count, min(block_ms, CLUSTER_BLOCK_MS))
            return response
        try:
            return await self.redis.xreadgroup(
                self.group, self.consumer, dict.fromkeys(streams, ids), count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            _log.warning("consumer group %s is missing (Redis restarted?): recreating it", self.group)
            await self.ensure_groups()
            return await self.redis.xreadgroup(
                self.group, self.consumer, dict.fromkeys(streams, ids), count=count, block=block_ms
            )

    async def _read_each(
        self, streams: list[str], ids: str, count: int, block_ms: int | None
    ) -> ReadResponse:
        assert self.redis is not None
        redis = self.redis

        async def one(stream: str) -> ReadResponse:
            try:
                return await redis.xreadgroup(
                    self.group, self.consumer, {stream: ids}, count=count, block=block_ms
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                _log.warning(
                    "consumer group %s is missing on a stream (failover?): recreating it", self.group
                )
                await self.ensure_groups()
                return await redis.xreadgroup(
                    self.group, self.consumer, {stream: ids}, count=count, block=block_ms
                )

        replies = await asyncio.gather(*(one(stream) for stream in streams))
        return [item for reply in replies for item in reply or []]

    async def _delivery_counts(self, stream: str, ids: Sequence[bytes]) -> dict[bytes, int]:
        assert self.redis is not None
        if not ids:
            return {}
        pending = await self.redis.xpending_range(
            stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 16, consumername=self.consumer
        )
        out: dict[bytes, int] = {}
        for item in pending:
            message_id: Any = item["message_id"]
            out[message_id] = int(item["times_delivered"])
        return out

    async def _ack(self, stream: str, ids: list[bytes], stop: asyncio.Event | None) -> None:
        """XACK after the commit; if Redis is gone, retry a while (re-reading would be a no-op)."""
        assert self.redis is not None
        backoff = Backoff()
        for _ in range(50):
            try:
                await self.redis.xack(stream, self.group, *ids)
                return
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the group was lost: entries will be replayed as no-ops
                    return
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.redis_ok = False
                self.last_error = describe(exc)
                if stop is not None and stop.is_set():
                    return
                await backoff.sleep(stop)

    async def _dead_letter(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], error: str, attempts: int = 1
    ) -> None:
        """The whole entry to the dead-letter stream, with the error, acknowledged in one MULTI."""
        _log.warning("dead-lettering entry %s of %s: %s", entry_id.decode(), stream, error)
        await self._move_to_dead_letter(stream, entry_id, {**fields}, error, attempts)

    async def _dead_letter_events(
        self,
        stream: str,
        entry_id: bytes,
        spans: list[wire.SpanRecord],
        refused: list[Refusal],
        attempts: int,
    ) -> None:
        """The refused events of an entry to the dead-letter stream, acknowledging the entry.

        The dead letter has the fields of an entry-level one; ``v``/``n``/``d`` hold only the spans
        of the refused events (as the bus carries them, so event ids stay the same if replayed)
        and ``events`` lists which events were refused and why (docs/aggregator.md).
        """
        where = locate(spans, {r.event_id for r in refused})
        positions = sorted({where[r.event_id][0] for r in refused if r.event_id in where})
        new_position = {old: new for new, old in enumerate(positions)}
        listed = []
        for refusal in sorted(refused, key=lambda r: where.get(r.event_id, (-1, -1))):
            position, index = where.get(refusal.event_id, (-1, -1))
            listed.append(
                {
                    "span": new_position.get(position),
                    "event": None if index in (-1, SERVER_SPAN_INDEX) else index,
                    "event_id": str(refusal.event_id),
                    "event_type": refusal.event_type,
                    "reason": refusal.reason,
                }
            )
        chosen = [spans[position] for position in positions]
        error = f"{len(refused)} of the entry's events refused: {listed[0]['reason']}"
        _log.warning(
            "dead-lettering %d events of entry %s of %s: %s", len(refused), entry_id.decode(), stream, error
        )
        fields: dict[Any, Any] = wire.entry_fields(wire.encode(chosen), len(chosen))
        fields[b"events"] = dumps_json(listed).encode()
        await self._move_to_dead_letter(stream, entry_id, fields, error, attempts)

    async def _move_to_dead_letter(
        self, stream: str, entry_id: bytes, fields: dict[Any, Any], error: str, attempts: int
    ) -> None:
        assert self.redis is not None
        dead: dict[Any, Any] = {
            **fields,
            b"error": error.encode(),
            b"source_stream": stream.encode(),
            b"source_id": entry_id,
            b"attempts": str(attempts).encode(),
            b"consumer": self.consumer.encode(),
        }
        # One MULTI: on a cluster the shard's dead-letter stream shares its stream's hash tag.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                dead_letter_key(self.settings, stream), dead, maxlen=DEAD_LETTER_MAX_LEN, approximate=True
            )
            pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
