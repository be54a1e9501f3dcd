"""The aggregator: a Redis consumer-group member that rolls the bus into PostgreSQL.

A batch = read entries, decode, map to event rows and count their rollup deltas. Consecutive
batches of new entries form a *round*: ONE transaction into which each batch's raw events are
copied as soon as it is mapped, and which merges the round's rollup once, commits, and then
acknowledges every entry of the round. Redelivered entries are committed batch by batch, the
careful way (stored events left out). A crash before a commit leaves the entries pending (they
are re-read); a crash after the commit but before the acknowledgement re-reads entries whose
events are already in the table, and the careful insert turns them into no-ops. Hence
exactly-once effect on every rollup.

Failure handling:

* Own pending entries (a previous life of this stable consumer name, a rolled-back round) are
  read first; entries pending on another member are claimed once that member's heartbeat has
  expired (``claim_idle_ms`` without one: it is gone), never for being old (see "liveness").
* An undecodable entry goes to the dead-letter stream at once. A bad *event* costs only itself:
  events later than the event window (``max_event_future_s``), with a value PostgreSQL refuses
  (a NUL character) or a field the rollups cannot use are left out of their entry, which is
  stored without them, and dead-lettered together, with their reasons, in the same MULTI as the
  entry's XACK (so exactly once). A round that meets a stored event, a day without a partition
  or a data error is rolled back and its entries are read again carefully; there an entry whose
  batch fails with a data error is retried alone, and once it has been delivered
  ``max_delivery_attempts`` times (XPENDING counts deliveries, so crashes count too) its events
  are committed by halves and only those PostgreSQL refuses are dead-lettered. An entry
  delivered more often than that without being processed (it crashes the process) is
  dead-lettered whole. The group never waits behind either.
* Redis or PostgreSQL going away: the open round is rolled back (its entries stay pending), a
  careful batch in hand is kept and retried with exponential backoff (that does not count as a
  delivery), connections are re-established; ``NOGROUP`` (a Redis that lost the group)
  recreates the group at ``0``, and the careful insert absorbs the replay.
* SIGTERM (``stop``): the open round is committed and acknowledged, or abandoned if its
  database is unreachable; its entries stay pending for the next life.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...exporter import wire
from ...exporter.admission import EventWindow, oldest_day
from ...exporter.bus import (
    GroupLag,
    dead_letter_key,
    dead_letter_keys,
    group_lag,
    member_key,
    owner_key,
    stream_keys,
)
from ...exporter.connection import CLUSTER_TRANSIENT_ERRORS, AsyncClient, async_client
from ...exporter.runtime.logconfig import correlated, new_correlation_id
from ...instrumentation.settings import ConfigurationError, Settings
from ..storage.db import create_pool
from ..storage.schema import (
    drop_expired_partitions,
    ensure_partitions,
    existing_partitions,
    partition_days_ahead,
)
from . import rollups
from .mapping import (
    RAW_COLUMNS,
    SERVER_SPAN_INDEX,
    EventRow,
    RawRecord,
    Refusal,
    dumps_json,
    locate,
    rows_from_span,
    screen,
)
from .rollups import Rollup, RollupInputError

_log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes] | None]
ReadResponse = Any  # [[stream, [Entry, ...]], ...] as redis-py returns it for RESP2

MAINTENANCE_INTERVAL_S = 3600.0
TARGET_EVENTS_PER_BATCH = 10_000
"""Reads are sized to about this many events (entries carry 1 to 512+ spans), never more than
``batch_size`` entries: memory stays bounded however far behind the group is; a round spans
several reads."""
ROUND_MAX_EVENTS = 250_000
ROUND_MAX_KEYS = 40_000
ROUND_MAX_S = 2.0
"""A round (one transaction over consecutive batches) commits at about this many events, rollup
keys (~600 B each in memory) or seconds, whichever comes first; with nothing more waiting on the
bus it commits at once, so the bounds matter only under a backlog."""
RACE_ATTEMPTS = 5
"""Transactions of one batch that may meet events another member is inserting at that moment."""
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


GC_THRESHOLDS = (10_000, 10, 10)


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """The garbage-collector settings of an aggregator process, for the duration of the block.

    A batch allocates hundreds of thousands of short-lived tuples and dicts, which reference
    counting frees; with CPython's default threshold (a young collection every 700 net
    allocations) the collector still walks them dozens of times per batch, and the process's
    long-lived objects at every older collection: ~20 % of the aggregator's CPU, measured. Here
    what is alive at start-up is frozen out of collection and the young generation is collected
    every 10,000 allocations. The aggregator command runs inside it, and so does the benchmark
    that measures it; library users of :class:`Aggregator` keep their process's settings.
    """
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


class PartitionsMissing(Exception):
    """Events of a round fall on days without a raw partition (created outside any round)."""

    def __init__(self, days: list[date]) -> None:
        super().__init__(f"no raw partition for {', '.join(map(str, days))}")


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass
class BatchResult:
    entries: int = 0
    events_seen: int = 0
    events_inserted: int = 0
    events_expired: int = 0
    dead_lettered: int = 0
    """Dead-letter entries written (a whole entry, or the refused events of one)."""
    events_dead_lettered: int = 0
    """Events refused (later than the event window, or a value no retry can store) and dead-lettered."""
    claimed: int = 0


@dataclass
class _Prepared:
    """One stream's entries of a batch, decoded, mapped and rolled up (in Python, not yet stored)."""

    stream: str
    ids: list[bytes] = field(default_factory=list)
    rows: list[RawRecord] = field(default_factory=list)
    """The raw events (an event may repeat: see ``Aggregator._prepare_entries``)."""
    by_entry: dict[bytes, list[RawRecord]] = field(default_factory=dict)
    fields: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    counts: dict[bytes, int] = field(default_factory=dict)
    """Delivery counts of redelivered entries (empty for new ones: first delivery)."""
    careful: bool = False
    """Entries delivered before: look for stored events before inserting."""
    seen: int = 0
    expired: int = 0
    """Events of ``ids`` read and left out as older than raw retention (un-counted if re-read)."""
    refused: dict[bytes, list[Refusal]] = field(default_factory=dict)
    """Entries of ``ids`` with events left out to be dead-lettered with their acknowledgement."""
    spans: dict[bytes, list[wire.SpanRecord]] = field(default_factory=dict)
    """The spans of those entries (the dead letter holds the spans of the refused events)."""


@dataclass
class _Batch:
    """One read, prepared: per stream, the entries to commit."""

    result: BatchResult = field(default_factory=BatchResult)
    streams: list[_Prepared] = field(default_factory=list)
    redelivered: bool = False
    cid: str | None = None
    """Correlation id of the batch's log records: ``batch-<first entry id>``."""
    rollup: Rollup | None = None
    """Where the batch's events were counted as they were mapped (the open round's rollup), if
    they all turn out new; ``None`` for redelivered entries, and after a :class:`RollupInputError`
    (which may have left a part of an entry counted)."""


@dataclass
class _Round:
    """One transaction over consecutive batches of new entries.

    Each batch's raw events are copied into ``analytics_events`` as soon as it is mapped (while
    the next one is read and mapped); their rollup, counted in one :class:`Rollup`, is merged
    once, when the round commits. A batch keys about as many rollup rows as a round of several
    batches, so the upserts per event fall with the round's size. Entries are acknowledged after
    the commit; a round that fails is rolled back and its entries, still pending, are read again
    the careful way.
    """

    conn: Any  # asyncpg.pool.PoolConnectionProxy
    transaction: Any  # asyncpg.transaction.Transaction
    rollup: Rollup
    cid: str
    """Correlation id of the round's log records: ``round-<first entry id>``."""
    started: float = field(default_factory=time.monotonic)
    events: int = 0
    batches: list[_Batch] = field(default_factory=list)
    copying: asyncio.Task[None] | None = None


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
        self._entered_at = time.monotonic()
        self._alive_at = 0.0
        """When the consume loop last turned (the heartbeat lapses if it stops)."""
        self._keeper: asyncio.Task[None] | None = None
        self._next_maintenance = 0.0
        self._stop: asyncio.Event | None = None
        self._events_per_entry = 50.0  # running estimate, sizes the reads
        self._pending_dirty = True
        """Own pending entries may exist that no batch in hand holds (start, claims, failures)."""
        self.on_committed: Callable[[str, list[bytes]], None] | None = None
        """Called with (stream, entry ids) right after their transaction committed (benchmarks)."""
        self._round: _Round | None = None
        """The transaction open over consecutive batches of new entries (see ``_step``)."""
        self._closing: asyncio.Task[None] | None = None
        """The previous round, committing while the next batch is read and mapped."""
        self.on_transaction: Callable[[int, int, float], None] | None = None
        """Called with (rows, rows inserted, seconds) after each committed transaction (self-telemetry)."""

    # --- connections -------------------------------------------------------------------------

    async def __aenter__(self) -> Aggregator:
        self._entered_at = time.monotonic()
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
        """(Re-)establish the consumer group and PostgreSQL; raises transient errors."""
        assert self.redis is not None
        await self.ensure_groups()
        self.redis_ok = True
        if self.pool is None:
            self.pool = await self._create_pool()
            self.postgres_ok = True

    async def _create_pool(self) -> asyncpg.Pool:
        # Every connection gets its delta tables (see rollups.setup_connection); one holds the
        # open round, one the round committing, one creates partitions, one answers status probes.
        try:
            return await create_pool(
                self.settings, "aggregator", min_size=1, max_size=4, setup_session=rollups.setup_connection
            )
        except asyncpg.UndefinedTableError as exc:
            raise ConfigurationError(
                f"schema {self.settings.postgres_schema!r} has no analytics tables ({exc}): "
                "run `studyin-analytics migrate` first"
            ) from exc

    async def close(self) -> None:
        if self._keeper is not None:
            keeper, self._keeper = self._keeper, None
            keeper.cancel()
            with contextlib.suppress(BaseException):
                await keeper
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

    # --- liveness, claims and adoption -----------------------------------------------------------
    #
    # A member says it is alive with heartbeat keys that expire after ``claim_idle_ms`` (one for
    # the member, one per shard of its own), refreshed three times per period while its loop
    # turns. Others take over only what belongs to a member whose heartbeat has expired: its
    # pending entries (claimed) and, with ``consumer_shards``, its shards (adopted). The age of
    # the entries decides nothing: after an outage every entry is old, and its owner may be
    # alive and busy with it.

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
        while True:
            if time.monotonic() - self._alive_at < 2 * period_s:
                try:
                    await self.heartbeat()
                    failing = None
                except Exception as exc:  # transient (Redis away): the consume loop reports it
                    if not is_transient(exc) and _describe(exc) != failing:
                        failing = _describe(exc)  # e.g. an ACL refusing SET: the others would take over
                        _log.warning("heartbeat not written (%s): other members may take over", failing)
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

    # --- batches and rounds --------------------------------------------------------------------
    #
    # ``_prepare`` reads one batch and maps it (Python CPU work), counting its events in the
    # open round's rollup as it goes. A batch of new entries joins the open round: its raw events
    # are copied while the next batch is read and mapped, so decoding overlaps the database work.
    # The round commits (rollup merged once, then XACK) when nothing more is waiting, when it is
    # large or old enough, or on stop. Redelivered entries (an earlier life, claims, a failed
    # round) never join a round: they are committed batch by batch, the careful way (stored
    # events probed first, a failing entry isolated). Entries are acknowledged only after their
    # own commit, so a crash at any point leaves them pending, and an abandoned round or batch
    # changes nothing.

    async def _prepare(self, block_ms: int | None, read_pending: bool, rollup: Rollup) -> _Batch:
        """Claim, read and map one batch (dead-letters undecodable entries on the way).

        Own pending entries (earlier life, claimed, left for a retry) come before new ones; they
        are looked for only when ``read_pending`` (no round or batch of this member is in
        flight, whose entries would show up as pending too) and something may have left them.
        New entries are counted into ``rollup`` as they are mapped.
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
            batch.rollup = rollup
            response = await self._read(">", count, block_ms)
        first = next((entries[0][0] for _, entries in response if entries), None)
        if first is None:
            return batch
        batch.cid = f"batch-{first.decode()}"
        with correlated(batch.cid):
            for stream, entries in response:
                if entries:
                    prepared = await self._prepare_entries(stream.decode(), entries, batch)
                    if prepared is not None:
                        batch.streams.append(prepared)
        return batch

    async def _commit_batch(self, batch: _Batch, stop: asyncio.Event | None) -> None:
        """Commit and acknowledge a prepared batch on its own, then count it in the totals."""
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

    async def _join_round(self, batch: _Batch) -> None:
        """Start copying ``batch`` (mapped into the open round's rollup) in the round; open one if none is.

        The batch is counted in the round's rollup already: if it cannot join (the previous
        batch's copy failed, PostgreSQL is gone), the round is rolled back with it and their
        entries, still pending, are read again the careful way.
        """
        assert self.pool is not None and batch.rollup is not None
        round_ = self._round
        days = {r[1].date() for prepared in batch.streams for r in prepared.rows}
        try:
            if round_ is None:
                async with self.pool.acquire() as conn:  # before the round holds any lock
                    await self._ensure_partitions(conn, days)
                conn = await self.pool.acquire()
                try:
                    transaction = conn.transaction()
                    await transaction.start()
                except BaseException:
                    await self.pool.release(conn)
                    raise
                cid = f"round-{batch.cid.removeprefix('batch-')}" if batch.cid else new_correlation_id()
                round_ = self._round = _Round(conn, transaction, batch.rollup, cid)
            await self._settle_copy(round_)
        except BaseException as exc:
            if self._round is not None:
                self._round = None
                await self._discard_round(round_, exc)  # type: ignore[arg-type]
            self._pending_dirty = True
            _uncount_rereads(batch)
            self._add_totals(batch.result)
            if isinstance(exc, Exception) and not is_transient(exc):
                return  # logged by the discard; the careful way takes over
            raise
        round_.batches.append(batch)
        round_.copying = asyncio.create_task(self._copy_batch(round_, batch, days))

    async def _settle_copy(self, round_: _Round) -> None:
        """Wait for the batch being copied into ``round_`` (its error is the round's)."""
        if round_.copying is not None:
            task, round_.copying = round_.copying, None
            await task

    async def _copy_batch(self, round_: _Round, batch: _Batch, days: set[date]) -> None:
        missing = days - self._partitions
        if missing:
            # Creating a partition locks the whole table, which this round's COPY holds already:
            # look (no lock), and if a day has none, roll the round back (the careful way creates it).
            assert self.pool is not None
            async with self.pool.acquire() as conn:
                self._partitions.update(day for day in await existing_partitions(conn) if day in missing)
            if not days <= self._partitions:
                raise PartitionsMissing(sorted(days - self._partitions))
        for prepared in batch.streams:
            await round_.conn.copy_records_to_table(
                "analytics_events", records=prepared.rows, columns=RAW_COLUMNS
            )
            round_.events += len(prepared.rows)
            batch.result.events_inserted += len(prepared.rows)  # counted in the totals at the commit
            # Only the ids stay for the acknowledgement: the round holds no event once copied.
            prepared.rows, prepared.by_entry, prepared.fields = [], {}, {}

    def _round_is_due(self, round_: _Round) -> bool:
        return (
            round_.events >= ROUND_MAX_EVENTS
            or round_.rollup.keys >= ROUND_MAX_KEYS
            or time.monotonic() - round_.started >= ROUND_MAX_S
        )

    async def _close_round(self, stop: asyncio.Event | None) -> None:
        """Commit the open round, if any (see :meth:`_commit_round`)."""
        round_, self._round = self._round, None
        if round_ is not None:
            await self._commit_round(round_, stop)

    async def _settle_closing(self) -> None:
        """Wait for the previous round's commit (its transient error is raised here)."""
        if self._closing is not None:
            task, self._closing = self._closing, None
            await task

    async def _commit_round(self, round_: _Round, stop: asyncio.Event | None) -> None:
        """Commit a round (its rollup merged once) and acknowledge its entries.

        A round that fails is rolled back, its entries stay pending and are re-read carefully;
        errors that say "try again later" are raised (after the rollback), others only logged.
        """
        with correlated(round_.cid):
            try:
                await self._settle_copy(round_)
                await round_.rollup.apply(round_.conn)
                await round_.transaction.commit()
            except Exception as exc:
                await self._discard_round(round_, exc)
                if is_transient(exc):
                    raise
                return
            await self._release(round_)
            self.postgres_ok = True
            if self.on_transaction is not None:
                self.on_transaction(round_.events, round_.events, time.monotonic() - round_.started)
            for batch in round_.batches:
                for prepared in batch.streams:
                    if self.on_committed is not None:
                        self.on_committed(prepared.stream, prepared.ids)
                    await self._acknowledge(prepared, prepared.ids, batch.result, stop)
                self._add_totals(batch.result)
                self.last_batch_at = time.time()

    async def _discard_round(self, round_: _Round, exc: BaseException | None) -> None:
        """Roll the round back; its entries stay pending and are read again, carefully."""
        with correlated(round_.cid):
            self._pending_dirty = True
            if exc is not None:
                self.last_error = _describe(exc)
                if isinstance(exc, asyncpg.UniqueViolationError):
                    _log.info("a round met stored events (redelivered or racing entries): re-reading them")
                elif isinstance(exc, PartitionsMissing):
                    _log.info("%s: rolling the round back, re-reading its entries to create them first", exc)
                else:
                    _log.warning(
                        "round of %d events rolled back (%s): re-reading its entries",
                        round_.events,
                        self.last_error,
                    )
            if round_.copying is not None:
                round_.copying.cancel()
                with contextlib.suppress(BaseException):
                    await round_.copying
                round_.copying = None
            try:
                await round_.transaction.rollback()
            except Exception:  # the connection is gone (PostgreSQL restarted): drop it
                with contextlib.suppress(Exception):
                    round_.conn.terminate()
            await self._release(round_)
            for batch in round_.batches:
                _uncount_rereads(batch)
                self._add_totals(batch.result)

    async def _release(self, round_: _Round) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):  # a pool dropped meanwhile closes it itself
                await self.pool.release(round_.conn)

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
        prepared = _Prepared(stream, counts=counts, careful=batch.redelivered)
        gone: list[bytes] = []
        window = EventWindow.of(self.settings)
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
                spans = wire.decode_entry(fields)
                rows = [row for record in spans for row in rows_from_span(record)]
            except Exception as exc:  # undecodable or unmappable: retrying cannot help
                await self._dead_letter(stream, entry_id, fields, _describe(exc), attempts)
                result.dead_lettered += 1
                continue
            result.events_seen += len(rows)
            self._events_per_entry = 0.8 * self._events_per_entry + 0.2 * max(1, len(rows))
            screened = screen(rows, window)
            kept, records, refused = screened.rows, screened.records, screened.refused
            result.events_expired += screened.expired
            if batch.rollup is not None:
                try:
                    # Counted where the batch's events go if they all turn out new.
                    batch.rollup.add(kept)
                except RollupInputError:  # a field no retry can mend: the careful way isolates it
                    batch.rollup = None  # it may have counted a part of this entry
            if batch.rollup is None:  # committed on its own (redelivered, or the round is lost)
                unusable = _unusable(kept)
                if unusable:
                    refused += unusable
                    bad = {r.event_id for r in unusable}
                    records = [r for r in records if r[0] not in bad]
                prepared.by_entry[entry_id] = records  # a failing entry is retried alone
                prepared.fields[entry_id] = fields
            if refused:
                prepared.refused[entry_id] = refused
                prepared.spans[entry_id] = spans
            # An event repeated within the batch (the same span exported twice) fails the fast
            # insert like a stored one does; the careful insert keeps one row per event id.
            prepared.ids.append(entry_id)
            prepared.seen += len(rows)
            prepared.expired += screened.expired
            prepared.rows.extend(records)
            await asyncio.sleep(0)  # let the batch in flight stream its COPY meanwhile
        if gone:
            await self.redis.xack(stream, self.group, *gone)
        return prepared if prepared.ids else None

    async def _commit_entries(
        self, prepared: _Prepared, result: BatchResult, stop: asyncio.Event | None
    ) -> None:
        try:
            result.events_inserted += await self._commit_with_retry(
                prepared.rows, None, prepared.careful, stop
            )
        except Exception as exc:  # a data error somewhere in the batch: find the entry
            if is_transient(exc):
                raise
            _log.warning("batch of %d entries failed (%s): retrying entries alone", len(prepared.ids), exc)
            await self._isolate(prepared, result, prepared.counts, stop)
            return
        if self.on_committed is not None:
            self.on_committed(prepared.stream, prepared.ids)
        await self._acknowledge(prepared, prepared.ids, result, stop)

    async def _isolate(
        self, prepared: _Prepared, result: BatchResult, counts: dict[bytes, int], stop: asyncio.Event | None
    ) -> None:
        """Commit entries one by one; an entry that fails is retried later, and at its last
        attempt committed by halves, dead-lettering only the events PostgreSQL refuses."""
        good: list[bytes] = []
        for entry_id in prepared.ids:
            try:
                result.events_inserted += await self._commit_with_retry(
                    prepared.by_entry[entry_id], None, True, stop
                )
                good.append(entry_id)
            except Exception as exc:
                if is_transient(exc):
                    raise
                attempts = counts.get(entry_id, 1)
                if attempts >= self.settings.max_delivery_attempts:
                    _log.warning(
                        "entry %s failed %d times (%s): committing its events by halves",
                        entry_id.decode(),
                        attempts,
                        _describe(exc),
                    )
                    await self._bisect(prepared, entry_id, result, stop)
                    good.append(entry_id)
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
            await self._acknowledge(prepared, good, result, stop)

    async def _bisect(
        self, prepared: _Prepared, entry_id: bytes, result: BatchResult, stop: asyncio.Event | None
    ) -> None:
        """Commit an entry's events in halves, down to single events: those PostgreSQL refuses are
        refused (dead-lettered with the entry's acknowledgement), all others stored. Careful
        inserts, so what a part already stored is a no-op when the part is tried again."""
        parts = [prepared.by_entry[entry_id]]
        refused: list[Refusal] = []
        while parts:
            part = parts.pop()
            try:
                result.events_inserted += await self._commit_with_retry(part, None, True, stop)
            except Exception as exc:
                if is_transient(exc):
                    raise
                if len(part) == 1:
                    refused.append(
                        Refusal(part[0][0], part[0][2], f"PostgreSQL refused it: {_describe(exc)}")
                    )
                else:
                    parts += [part[: len(part) // 2], part[len(part) // 2 :]]
        if refused:
            prepared.refused.setdefault(entry_id, []).extend(refused)
            prepared.spans.setdefault(entry_id, wire.decode_entry(prepared.fields[entry_id]))

    async def _acknowledge(
        self, prepared: _Prepared, ids: list[bytes], result: BatchResult, stop: asyncio.Event | None
    ) -> None:
        """XACK committed entries; an entry with refused events is acknowledged in one MULTI with
        their dead letter (so a crash in between re-reads it, and the dead letter is written once)."""
        plain = [entry_id for entry_id in ids if entry_id not in prepared.refused]
        if plain:
            await self._ack(prepared.stream, plain, stop)
        for entry_id in ids:
            refused = prepared.refused.get(entry_id)
            if refused:
                attempts = prepared.counts.get(entry_id, 1)
                await self._dead_letter_events(
                    prepared.stream, entry_id, prepared.spans[entry_id], refused, attempts
                )
                result.dead_lettered += 1
                result.events_dead_lettered += len(refused)

    async def _commit_with_retry(
        self, rows: list[RawRecord], rollup: Rollup | None, careful: bool, stop: asyncio.Event | None
    ) -> int:
        """Insert + roll up ``rows`` in one transaction; waits out PostgreSQL outages."""
        if not rows:
            return 0
        backoff = Backoff()
        while True:
            try:
                if self.pool is None:
                    self.pool = await self._create_pool()
                return await self._commit(rows, rollup, careful)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.last_error = _describe(exc)
                _log.warning("PostgreSQL unavailable (%s); retrying the batch", self.last_error)
                await self._drop_pool()
                if stop is not None and stop.is_set():
                    raise
                await backoff.sleep(stop)

    async def _commit(self, rows: list[RawRecord], rollup: Rollup | None, careful: bool) -> int:
        """One transaction: the raw events, then the rollup of those that were new."""
        assert self.pool is not None
        started = time.monotonic()
        days: set[date] = {r[1].date() for r in rows}
        inserted = 0
        async with self.pool.acquire() as conn:
            await self._ensure_partitions(conn, days)
            for attempt in range(RACE_ATTEMPTS):
                try:
                    async with conn.transaction():
                        inserted = await rollups.insert_events(conn, rows, rollup, careful=careful)
                    break
                except asyncpg.UniqueViolationError:
                    # Stored already (redelivered) or inserted by another member meanwhile (see
                    # rollups): again, leaving out what is stored by then.
                    if attempt == RACE_ATTEMPTS - 1:
                        raise
                    careful = True
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
        fields: dict[Any, Any] = wire.entry_fields(wire.encode_records(chosen), len(chosen))
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

    def _add_totals(self, result: BatchResult) -> None:
        for name, value in asdict(result).items():
            setattr(self.totals, name, getattr(self.totals, name) + value)

    # --- maintenance ------------------------------------------------------------------------

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

    # --- health -----------------------------------------------------------------------------

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

    async def _step(self, block_ms: int, stop: asyncio.Event | None) -> _Batch:
        """Prepare one batch (while the previous one is copied into the open round) and place it:
        into the open round, into a new round, or committed on its own the careful way.
        """
        self._mark_alive()
        round_ = self._round
        if round_ is not None and self._round_is_due(round_):
            # It commits while the next batches are read, mapped and copied into a new round.
            await self._settle_closing()  # one round commits at a time
            self._round = None
            self._closing = asyncio.create_task(self._commit_round(round_, stop))
            round_ = None
        if round_ is None and self._pending_dirty:
            await self._settle_closing()  # then entries left pending are read first, not after a lull
        rollup = round_.rollup if round_ is not None else Rollup()
        try:
            # With a round open nothing is waited for: the round commits once no entry is ready.
            batch = await self._prepare(
                None if round_ is not None else block_ms,
                read_pending=round_ is None and self._closing is None,
                rollup=rollup,
            )
        except BaseException:
            if round_ is not None:  # the read may have counted a part of its batch in the round
                self._round = None
                await self._discard_round(round_, None)
            await self._settle_closing()
            raise
        if not batch.redelivered and batch.rollup is not rollup:
            # A RollupInputError (its entry dead-lettered) may have left a part of an entry
            # counted: the round is rolled back, and the batch's other entries are read again,
            # carefully, like the round's.
            if round_ is not None:
                self._round = None
                await self._discard_round(round_, None)
            self._pending_dirty = True
            _uncount_rereads(batch)
            self._add_totals(batch.result)
            return batch
        if batch.streams and batch.rollup is not None:
            await self._join_round(batch)
            return batch
        await self._settle_closing()
        await self._close_round(stop)
        if batch.streams:  # redelivered entries
            with correlated(batch.cid):
                await self._commit_batch(batch, stop)
        else:
            self._add_totals(batch.result)
        return batch

    async def _finish(self, stop: asyncio.Event | None) -> None:
        """Commit the open round (if its database is unreachable, leave its entries pending)."""
        for finish in (self._settle_closing, lambda: self._close_round(stop)):
            try:
                await finish()
            except Exception as exc:  # its entries stay pending; reported, never raised from here
                self.last_error = _describe(exc)
                _log.warning("round in flight not committed: %s", self.last_error)

    async def drain(self, timeout_s: float = 30.0) -> BatchResult:
        """Process until nothing is left to read (for the demo, tests and benchmarks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while loop.time() < deadline:
                batch = await self._step(50, None)
                idle = self._round is None and batch.result.entries == 0
                if idle and await self.lag(self.reading_streams()) == 0:
                    return self.totals
        finally:
            await self._finish(None)
        raise TimeoutError(f"bus not drained after {timeout_s}s")

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until ``stop`` is set; survives Redis and PostgreSQL restarts.

        On ``stop`` the open round is committed (its batches are all copied already) and
        acknowledged; if PostgreSQL is unreachable it is abandoned, its entries pending.
        """
        self._stop = stop
        backoff = Backoff()
        try:
            while not stop.is_set():
                self._mark_alive()
                try:
                    idle = self._round is None and self._closing is None
                    if idle and (self.pool is None or not self.redis_ok):
                        await self.connect()
                    now = time.monotonic()
                    if now >= self._next_maintenance:
                        # Even under a backlog: the rounds in flight commit first (partitions are
                        # created and dropped outside any round).
                        await self._settle_closing()
                        await self._close_round(stop)
                        await self.maintain()
                        self._next_maintenance = now + MAINTENANCE_INTERVAL_S
                    await self._step(500, stop)
                    self.redis_ok = True
                    backoff.reset()
                except Exception as exc:
                    if self._round is not None:
                        round_, self._round = self._round, None
                        await self._discard_round(round_, exc)
                    with contextlib.suppress(Exception):  # it rolls itself back on failure
                        await self._settle_closing()
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
            await self._finish(stop)


def _uncount_rereads(batch: _Batch) -> None:
    """Take back what ``batch`` counted of entries that stay pending (read again, counted then):
    totals count each read that took effect, and dead letters."""
    result = batch.result
    result.events_inserted = 0
    for prepared in batch.streams:
        result.entries -= len(prepared.ids)
        result.events_seen -= prepared.seen
        result.events_expired -= prepared.expired


def _unusable(rows: list[EventRow]) -> list[Refusal]:
    """The events of ``rows`` with a field the rollups cannot use, each with the reason."""
    try:
        Rollup().add(rows)  # the common case: all usable, one pass
        return []
    except RollupInputError:
        pass
    refused: list[Refusal] = []
    for row in rows:
        try:
            Rollup().add([row])  # a row's fields alone decide
        except RollupInputError as exc:
            refused.append(Refusal(row.event_id, row.event_type, str(exc)))
    return refused


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]
