"""The aggregator: a Redis consumer-group member that rolls the bus into PostgreSQL.

One batch = read entries, decode, map to event rows, then in ONE transaction insert the raw
rows idempotently and update the rollups from the rows that were new; acknowledge after
the commit. A crash before the commit leaves the entries pending (they are re-read); a
crash after the commit but before the acknowledgement re-reads entries whose events are
already in the table, and the idempotent insert turns them into no-ops. Hence exactly-once
effect on every rollup.

Failure handling:

* Own pending entries (a previous life of this stable consumer name) are read first;
  entries pending on another consumer for longer than ``claim_idle_ms`` are claimed with
  XAUTOCLAIM (the cursor is followed to ``0-0``).
* An undecodable entry goes to the dead-letter stream at once. An entry whose batch fails
  with a data error is retried alone; an entry delivered more than
  ``max_delivery_attempts`` times (XPENDING counts deliveries, so crashes count too) is
  dead-lettered with its last error. The group never waits behind it.
* Redis or PostgreSQL going away: the batch in hand is kept and retried with exponential
  backoff (it does not count as a delivery), connections are re-established; ``NOGROUP``
  (a Redis that lost the group) recreates the group at ``0``, and the idempotent insert
  absorbs the replay.
* SIGTERM (``stop``): the batch in flight is finished (committed and acknowledged), or
  abandoned if its database is unreachable; its entries stay pending for the next life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..exporter import wire
from ..exporter.bus import dead_letter_key, dead_letter_keys, stream_keys
from ..exporter.connection import CLUSTER_TRANSIENT_ERRORS, AsyncClient, async_client
from ..instrumentation.settings import Settings
from . import rollups
from .db import create_pool
from .mapping import rows_from_span, staging_record
from .rollups import StagingRecord
from .schema import (
    drop_expired_partitions,
    ensure_partitions,
    partition_days_ahead,
    retention_cutoff,
)

_log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes] | None]
ReadResponse = Any  # [[stream, [Entry, ...]], ...] as redis-py returns it for RESP2

MAINTENANCE_INTERVAL_S = 3600.0
TARGET_EVENTS_PER_BATCH = 25_000
"""Reads are sized to about this many events per transaction (entries carry 1 to 512+ spans),
never more than ``batch_size`` entries: memory stays bounded however far behind the group is."""
CLUSTER_BLOCK_MS = 50
"""On a cluster each shard stream is read with its own blocking XREADGROUP and the batch waits
for all of them: an entry arriving on one shard waits at most this long for the others' reads."""
CLAIM_INTERVAL_S = 5.0
DEAD_LETTER_MAX_LEN = 100_000
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 5.0

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock / serialization: retry the batch
    RedisConnectionError,
    RedisTimeoutError,
    *CLUSTER_TRANSIENT_ERRORS,  # a primary failing over
)
"""Errors that say "try again later", never "this entry is bad"."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass
class BatchResult:
    entries: int = 0
    events_seen: int = 0
    events_inserted: int = 0
    events_expired: int = 0
    dead_lettered: int = 0
    claimed: int = 0


@dataclass
class _Prepared:
    """One stream's entries of a batch, decoded and mapped."""

    stream: str
    ids: list[bytes] = field(default_factory=list)
    rows: list[StagingRecord] = field(default_factory=list)
    by_entry: dict[bytes, list[StagingRecord]] = field(default_factory=dict)
    fields: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    counts: dict[bytes, int] = field(default_factory=dict)
    """Delivery counts of redelivered entries (empty for new ones: first delivery)."""


@dataclass
class _Batch:
    """One read, prepared: per stream, the entries to commit."""

    result: BatchResult = field(default_factory=BatchResult)
    streams: list[_Prepared] = field(default_factory=list)
    redelivered: bool = False


class Backoff:
    """Exponential backoff with jitter, interruptible by ``stop``."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.delay_s = initial_s

    def reset(self) -> None:
        self.delay_s = self.initial_s

    async def sleep(self, stop: asyncio.Event | None) -> None:
        delay = self.delay_s * (0.5 + random.random() / 2)
        self.delay_s = min(self.delay_s * 2, self.max_s)
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)


class Aggregator:
    """Consumes the bus into the analytics tables. Use as ``async with Aggregator(settings) as agg``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams = stream_keys(settings)
        self.own_streams = [self.streams[shard] for shard in settings.preferred_shards]
        """Shards read for new entries every batch (``consumer_shards``; all by default)."""
        self._adopted: set[str] = set()
        """Other shards read too, for now, because their entries found no reader (see ``adopt_orphans``)."""
        self.group = settings.consumer_group
        self.consumer = settings.consumer_name
        self.redis: AsyncClient | None = None
        self.pool: asyncpg.Pool | None = None
        self._partitions: set[date] = set()
        self.totals = BatchResult()
        self.started_at = time.time()
        self.last_batch_at: float | None = None
        self.last_error: str | None = None
        self.redis_ok = False
        self.postgres_ok = False
        self._next_claim = 0.0
        self._next_maintenance = 0.0
        self._stop: asyncio.Event | None = None
        self._events_per_entry = 50.0  # running estimate, sizes the reads
        self._pending_dirty = True
        """Own pending entries may exist that no batch in hand holds (start, claims, failures)."""
        self.on_committed: Callable[[str, list[bytes]], None] | None = None
        """Called with (stream, entry ids) right after their transaction committed (benchmarks)."""
        self.on_transaction: Callable[[int, int, float], None] | None = None
        """Called with (rows, rows inserted, seconds) after each committed transaction (self-telemetry)."""

    # --- connections -------------------------------------------------------------------------

    async def __aenter__(self) -> Aggregator:
        self.redis = async_client(
            self.settings, socket_timeout=15, socket_connect_timeout=5, health_check_interval=15
        )
        try:
            # Unreachable at start-up: fail at once with the reason (the CLI exits 1 naming the
            # server; a supervisor restarts it). Once running, outages are waited out instead.
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """(Re-)establish PostgreSQL and the consumer group; raises transient errors."""
        assert self.redis is not None
        if self.pool is None:
            self.pool = await self._create_pool()
            self.postgres_ok = True
        await self.ensure_groups()
        self.redis_ok = True

    async def _create_pool(self) -> asyncpg.Pool:
        # Every connection gets its staging tables once (temporary, emptied at each commit).
        return await create_pool(
            self.settings, "aggregator", min_size=1, max_size=2, setup_session=rollups.create_temp_tables
        )

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    async def _drop_pool(self) -> None:
        self.postgres_ok = False
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.terminate()

    async def ensure_groups(self) -> None:
        assert self.redis is not None
        for stream in self.streams:
            try:
                # From 0: after a Redis that lost the group, the whole bus is replayed and the
                # idempotent insert turns what was already counted into no-ops.
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # --- reading ----------------------------------------------------------------------------

    def reading_streams(self) -> list[str]:
        """Streams this member reads new entries from: its own shards and any adopted ones."""
        return [s for s in self.streams if s in self._adopted or s in self.own_streams]

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

    async def claim_stale(self) -> int:
        """XAUTOCLAIM entries idle on other (dead) consumers into this one; returns the count."""
        assert self.redis is not None
        claimed = 0
        for stream in self.streams:
            cursor: bytes | str = "0-0"
            for _ in range(10_000):  # bounded: each round moves the cursor forward
                try:
                    response = await self.redis.xautoclaim(
                        stream,
                        self.group,
                        self.consumer,
                        min_idle_time=self.settings.claim_idle_ms,
                        start_id=cursor,
                        count=self.settings.batch_size,
                    )
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await self.ensure_groups()
                    break
                cursor, entries = response[0], response[1]
                deleted = response[2] if len(response) > 2 else []
                if deleted:  # trimmed from the stream while pending: nothing left to count
                    await self.redis.xack(stream, self.group, *deleted)
                claimed += len(entries)
                if cursor in (b"0-0", "0-0"):
                    break
        if claimed:
            _log.info("claimed %d entries pending on dead consumers", claimed)
        return claimed

    async def adopt_orphans(self) -> list[str]:
        """Read other members' shards too while their oldest unread entry is older than ``claim_idle_ms``.

        With ``consumer_shards`` each member reads new entries from its own shards only, so
        members aggregate disjoint learners and never wait on each other's rollup rows. A shard
        whose member is gone would stall; this is the failover: any member adopts such a shard
        (and gives it back once nothing waits on it), within ``claim_idle_ms`` plus the check
        interval. Returns the streams adopted now. (Local clock against entry ids: hosts are
        expected within seconds of Redis, far below ``claim_idle_ms``.)
        """
        assert self.redis is not None
        if len(self.own_streams) == len(self.streams):
            return []
        now_ms = time.time() * 1000
        adopted: list[str] = []
        for stream in self.streams:
            if stream in self.own_streams:
                continue
            oldest = await self._oldest_unread(stream)
            if oldest is not None and now_ms - oldest >= self.settings.claim_idle_ms:
                if stream not in self._adopted:
                    _log.warning(
                        "no member read %s for %.0f s: reading it too", stream, (now_ms - oldest) / 1000
                    )
                    self._adopted.add(stream)
                    adopted.append(stream)
            elif oldest is None and stream in self._adopted:
                _log.info("nothing waits on %s any more: leaving it to its members", stream)
                self._adopted.discard(stream)
        return adopted

    async def _oldest_unread(self, stream: str) -> int | None:
        """Milliseconds time of the oldest entry the group has not delivered yet (``None``: none)."""
        assert self.redis is not None
        last: Any = b"0-0"
        try:
            for group in await self.redis.xinfo_groups(stream):
                if group["name"].decode() == self.group:
                    last = group["last-delivered-id"]
        except ResponseError:  # no stream yet: nothing waits
            return None
        after: Any = await self.redis.xrange(stream, min=f"({last.decode()}", count=1)
        if not after:
            return None
        return int(after[0][0].decode().split("-", 1)[0])

    # --- one batch ---------------------------------------------------------------------------
    #
    # A batch has two phases: ``_prepare`` (read, decode, map: Python CPU work) and
    # ``_commit_batch`` (one transaction per stream, then XACK: mostly waiting on PostgreSQL).
    # ``run`` and ``drain`` keep one batch committing while they prepare the next, so the
    # decoding of batch N+1 overlaps the database work of batch N. At most one transaction is
    # in flight; a prepared batch is committed only after the previous one finished, and
    # entries are acknowledged only after their own commit, so nothing about exactly-once
    # changes: an abandoned prepared batch simply stays pending.

    async def process_batch(
        self, block_ms: int | None = 1000, stop: asyncio.Event | None = None
    ) -> BatchResult:
        """Read, roll up and acknowledge one batch (pending entries of this consumer first)."""
        self._pending_dirty = True
        batch = await self._prepare(block_ms, read_pending=True)
        await self._commit_batch(batch, stop)
        return batch.result

    async def _prepare(self, block_ms: int | None, read_pending: bool) -> _Batch:
        """Claim, read and map one batch (dead-letters undecodable entries on the way).

        Own pending entries (earlier life, claimed, left for a retry) come before new ones; they
        are looked for only when ``read_pending`` (no batch of this member is in flight, whose
        entries would show up as pending too) and something may have left them.
        """
        batch = _Batch()
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + CLAIM_INTERVAL_S
            batch.result.claimed = await self.claim_stale()
            if batch.result.claimed:
                self._pending_dirty = True
            await self.adopt_orphans()
        count = self.read_count()
        response: ReadResponse = []
        if read_pending and self._pending_dirty:
            response = await self._read("0", count, None)
            batch.redelivered = any(entries for _, entries in response)
            if not batch.redelivered:
                self._pending_dirty = False
        if not batch.redelivered:
            response = await self._read(">", count, block_ms)
        for stream, entries in response:
            if entries:
                prepared = await self._prepare_entries(stream.decode(), entries, batch)
                if prepared is not None:
                    batch.streams.append(prepared)
        return batch

    async def _commit_batch(self, batch: _Batch, stop: asyncio.Event | None) -> None:
        """Commit and acknowledge a prepared batch, then count it in the totals."""
        try:
            for prepared in batch.streams:
                await self._commit_entries(prepared, batch.result, stop)
        except BaseException:
            self._pending_dirty = True  # whatever was not acknowledged is re-read from "0"
            raise
        finally:
            self._add_totals(batch.result)
        if batch.result.entries:
            self.last_batch_at = time.time()

    def read_count(self) -> int:
        """Entries per read: about TARGET_EVENTS_PER_BATCH events, at most ``batch_size``."""
        return max(1, min(self.settings.batch_size, int(TARGET_EVENTS_PER_BATCH / self._events_per_entry)))

    async def _prepare_entries(self, stream: str, entries: list[Entry], batch: _Batch) -> _Prepared | None:
        assert self.redis is not None
        result = batch.result
        result.entries += len(entries)
        counts: dict[bytes, int] = {}
        if batch.redelivered:
            counts = await self._delivery_counts(stream, [entry_id for entry_id, _ in entries])
        prepared = _Prepared(stream, counts=counts)
        gone: list[bytes] = []
        cutoff_day = retention_cutoff(self.settings.raw_retention_days)
        cutoff = datetime(cutoff_day.year, cutoff_day.month, cutoff_day.day, tzinfo=UTC)
        for entry_id, fields in entries:
            if not fields:  # trimmed from the stream while it was pending
                gone.append(entry_id)
                continue
            attempts = counts.get(entry_id, 1)
            if attempts > self.settings.max_delivery_attempts:
                await self._dead_letter(
                    stream, entry_id, fields, f"not processed after {attempts - 1} deliveries", attempts
                )
                result.dead_lettered += 1
                continue
            try:
                rows = [row for record in wire.decode_entry(fields) for row in rows_from_span(record)]
            except Exception as exc:  # undecodable or unmappable: retrying cannot help
                await self._dead_letter(stream, entry_id, fields, _describe(exc), attempts)
                result.dead_lettered += 1
                continue
            result.events_seen += len(rows)
            self._events_per_entry = 0.8 * self._events_per_entry + 0.2 * max(1, len(rows))
            kept = [staging_record(r) for r in rows if r.occurred_at >= cutoff]
            result.events_expired += len(rows) - len(kept)
            prepared.ids.append(entry_id)
            prepared.rows.extend(kept)
            prepared.by_entry[entry_id] = kept
            prepared.fields[entry_id] = fields
        if gone:
            await self.redis.xack(stream, self.group, *gone)
        return prepared if prepared.ids else None

    async def _commit_entries(
        self, prepared: _Prepared, result: BatchResult, stop: asyncio.Event | None
    ) -> None:
        try:
            result.events_inserted += await self._commit_with_retry(prepared.rows, stop)
        except Exception as exc:  # a data error somewhere in the batch: find the entry
            if is_transient(exc):
                raise
            _log.warning("batch of %d entries failed (%s): retrying entries alone", len(prepared.ids), exc)
            await self._isolate(prepared, result, prepared.counts, stop)
            return
        if self.on_committed is not None:
            self.on_committed(prepared.stream, prepared.ids)
        await self._ack(prepared.stream, prepared.ids, stop)

    async def _isolate(
        self, prepared: _Prepared, result: BatchResult, counts: dict[bytes, int], stop: asyncio.Event | None
    ) -> None:
        """Commit entries one by one; an entry that fails is retried later, then dead-lettered."""
        good: list[bytes] = []
        for entry_id in prepared.ids:
            try:
                result.events_inserted += await self._commit_with_retry(prepared.by_entry[entry_id], stop)
                good.append(entry_id)
            except Exception as exc:
                if is_transient(exc):
                    raise
                attempts = counts.get(entry_id, 1)
                if attempts >= self.settings.max_delivery_attempts:
                    await self._dead_letter(
                        prepared.stream, entry_id, prepared.fields[entry_id], _describe(exc), attempts
                    )
                    result.dead_lettered += 1
                else:
                    self._pending_dirty = True  # left pending: retried from "0"
                    _log.warning(
                        "entry %s failed (attempt %d of %d): %s",
                        entry_id.decode(),
                        attempts,
                        self.settings.max_delivery_attempts,
                        _describe(exc),
                    )
        if good:
            await self._ack(prepared.stream, good, stop)

    async def _commit_with_retry(self, rows: list[StagingRecord], stop: asyncio.Event | None) -> int:
        """Insert + roll up ``rows`` in one transaction; waits out PostgreSQL outages."""
        if not rows:
            return 0
        backoff = Backoff()
        while True:
            try:
                if self.pool is None:
                    self.pool = await self._create_pool()
                return await self._commit(rows)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.last_error = _describe(exc)
                _log.warning("PostgreSQL unavailable (%s); retrying the batch", self.last_error)
                await self._drop_pool()
                if stop is not None and stop.is_set():
                    raise
                await backoff.sleep(stop)

    async def _commit(self, rows: list[StagingRecord]) -> int:
        assert self.pool is not None
        started = time.monotonic()
        days: set[date] = {r[1].date() for r in rows}
        async with self.pool.acquire() as conn:
            await ensure_partitions(conn, days, self._partitions)
            try:
                async with conn.transaction():
                    inserted = await rollups.insert_and_roll_up(conn, rows)
            except asyncpg.UniqueViolationError:
                # Another member inserted some of these events meanwhile (see rollups): again,
                # keeping only what this transaction inserts.
                async with conn.transaction():
                    inserted = await rollups.insert_and_roll_up(conn, rows, racing=True)
        self.postgres_ok = True
        if self.on_transaction is not None:
            self.on_transaction(len(rows), inserted, time.monotonic() - started)
        return inserted

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
                self.last_error = _describe(exc)
                if stop is not None and stop.is_set():
                    return
                await backoff.sleep(stop)

    async def _dead_letter(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], error: str, attempts: int = 1
    ) -> None:
        assert self.redis is not None
        _log.warning("dead-lettering entry %s of %s: %s", entry_id.decode(), stream, error)
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

    def _add_totals(self, result: BatchResult) -> None:
        for name, value in asdict(result).items():
            setattr(self.totals, name, getattr(self.totals, name) + value)

    # --- maintenance ------------------------------------------------------------------------

    async def maintain(self) -> list[str]:
        """Create daily partitions ahead and drop those past raw retention."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await ensure_partitions(conn, partition_days_ahead(datetime.now(UTC).date()), self._partitions)
            dropped = await drop_expired_partitions(conn, self.settings.raw_retention_days, self._partitions)
        if dropped:
            _log.info("dropped raw partitions past retention: %s", ", ".join(dropped))
        return dropped

    # --- health -----------------------------------------------------------------------------

    async def lag(self, streams: Sequence[str] | None = None) -> int:
        """Entries not yet acknowledged by the group (unread plus pending), over ``streams`` (all)."""
        assert self.redis is not None
        total = 0
        for stream in self.streams if streams is None else streams:
            pending = await self.redis.xpending(stream, self.group)
            total += int(pending["pending"])
            groups = await self.redis.xinfo_groups(stream)
            for group in groups:
                if group["name"].decode() == self.group:
                    lag = group.get("lag")
                    if lag is None:  # Redis < 7 or unknown: count what lies after the last delivered id
                        last = group["last-delivered-id"]
                        after = await self.redis.xrange(stream, min=f"({last.decode()}", count=100_000)
                        lag = len(after or [])
                    total += int(lag)
        return total

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
            info["lag"] = await self.lag()
            info["pending"] = sum(
                [int((await self.redis.xpending(s, self.group))["pending"]) for s in self.streams]
            )
            info["dead_letter_length"] = sum(
                [int(await self.redis.xlen(key)) for key in dead_letter_keys(self.settings)]
            )
            info["redis"] = "ok"
        except Exception as exc:  # report, never raise, from a health probe
            info["redis"] = _describe(exc)
        try:
            if self.pool is None:
                raise ConnectionError("no pool")
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), timeout=2)
            info["postgres"] = "ok"
        except Exception as exc:
            info["postgres"] = _describe(exc)
        info["healthy"] = info["redis"] == "ok" and info["postgres"] == "ok"
        return info

    # --- loops ------------------------------------------------------------------------------

    async def drain(self, timeout_s: float = 30.0) -> BatchResult:
        """Process until nothing is left to read (for the demo, tests and benchmarks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        inflight: asyncio.Task[None] | None = None
        try:
            while loop.time() < deadline:
                batch = await self._prepare(block_ms=50, read_pending=inflight is None)
                if inflight is not None:
                    task, inflight = inflight, None
                    await task
                if batch.streams:
                    inflight = asyncio.create_task(self._commit_batch(batch, None))
                    continue
                await self._commit_batch(batch, None)  # nothing to write: just the totals
                if batch.result.entries == 0 and await self.lag(self.reading_streams()) == 0:
                    return self.totals
        finally:
            await self._finish_inflight(inflight)
        raise TimeoutError(f"bus not drained after {timeout_s}s")

    async def _finish_inflight(self, inflight: asyncio.Task[None] | None) -> None:
        """Let the batch in flight commit (or give up on its own terms) before leaving."""
        if inflight is None:
            return
        try:
            await inflight
        except Exception as exc:  # its entries stay pending; reported, never raised from here
            self.last_error = _describe(exc)
            _log.warning("batch in flight not committed: %s", self.last_error)

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until ``stop`` is set; survives Redis and PostgreSQL restarts.

        One batch commits while the next is read and mapped (see ``_prepare``); on ``stop``
        the batch in flight is finished and a batch only prepared is left pending.
        """
        self._stop = stop
        backoff = Backoff()
        inflight: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                try:
                    # With a batch in flight, its retry loop owns the pool (it rebuilds it).
                    if inflight is None and (self.pool is None or not self.redis_ok):
                        await self.connect()
                    now = time.monotonic()
                    if inflight is None and now >= self._next_maintenance:
                        await self.maintain()
                        self._next_maintenance = now + MAINTENANCE_INTERVAL_S
                    batch = await self._prepare(block_ms=500, read_pending=inflight is None)
                    if inflight is not None:
                        task, inflight = inflight, None
                        await task
                    if stop.is_set() and batch.streams:
                        self._pending_dirty = True  # prepared, never written: stays pending
                        break
                    if batch.streams:
                        inflight = asyncio.create_task(self._commit_batch(batch, stop))
                    else:
                        await self._commit_batch(batch, stop)
                    self.redis_ok = True
                    backoff.reset()
                except Exception as exc:
                    unfinished, inflight = inflight, None
                    await self._finish_inflight(unfinished)
                    self._pending_dirty = True
                    self.last_error = _describe(exc)
                    if is_transient(exc):
                        _log.warning("connection problem (%s); reconnecting", self.last_error)
                        if isinstance(
                            exc, (RedisConnectionError, RedisTimeoutError, *CLUSTER_TRANSIENT_ERRORS)
                        ):
                            self.redis_ok = False
                        else:
                            await self._drop_pool()
                    else:
                        _log.exception("unexpected error in the aggregator loop")
                    await backoff.sleep(stop)
        finally:
            await self._finish_inflight(inflight)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]
