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

Layout: the work is done in small steps, one module per concern, stacked as layers of one class
(each layer uses only those below it, so a step's state is the member's state):

* member.py: state and connections; maintenance.py: raw partitions; status.py: health and lag;
* reader.py: read, acknowledge, dead-letter; liveness.py: heartbeats, claims, adoption;
* careful.py: redelivered entries committed batch by batch; preparing.py: read and map a batch;
* rounds.py: the round state machine; retry.py: transient errors and backoff;
  batches.py: the data a batch and a round carry;
* here: the consume loop (``_step``, ``run``, ``drain``, ``_finish``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...exporter.connection import CLUSTER_TRANSIENT_ERRORS
from ...exporter.runtime.logconfig import correlated
from .batches import Batch, BatchResult, uncount_rereads
from .maintenance import MAINTENANCE_INTERVAL_S, PartitionsMissing
from .retry import TRANSIENT_ERRORS, Backoff, describe, is_transient
from .rollups import Rollup
from .rounds import Rounds

__all__ = [
    "TRANSIENT_ERRORS",
    "Aggregator",
    "Backoff",
    "BatchResult",
    "PartitionsMissing",
    "is_transient",
    "tuned_gc",
]

_log = logging.getLogger(__name__)

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


class Aggregator(Rounds):
    """Consumes the bus into the analytics tables. Use as ``async with Aggregator(settings) as agg``."""

    async def _step(self, block_ms: int, stop: asyncio.Event | None) -> Batch:
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
            uncount_rereads(batch)
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
                _log_careful(batch)
        else:
            self._add_totals(batch.result)
        return batch

    async def _finish(self, stop: asyncio.Event | None) -> None:
        """Commit the open round (if its database is unreachable, leave its entries pending)."""
        for finish in (self._settle_closing, lambda: self._close_round(stop)):
            try:
                await finish()
            except Exception as exc:  # its entries stay pending; reported, never raised from here
                self.last_error = describe(exc)
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
                    self.last_error = describe(exc)
                    if is_transient(exc):  # logged once per outage (redis_ok, postgres_ok)
                        _log.debug("connection problem (%s); reconnecting", self.last_error)
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


def _log_careful(batch: Batch) -> None:
    """One INFO line per redelivered batch (an operator sees a crash or a failed round recovered)."""
    counts = [n for prepared in batch.streams for n in prepared.counts.values()]
    result = batch.result
    _log.info(
        "%d redelivered entries (delivered up to %d times) committed the careful way: "
        "%d of %d events new, the others stored already",
        result.entries,
        max(counts, default=1),
        result.events_inserted,
        result.events_seen - result.events_expired,
    )
