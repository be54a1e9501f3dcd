"""Rounds: the transaction state machine over consecutive batches of new entries.

``_prepare`` reads one batch and maps it (Python CPU work), counting its events in the
open round's rollup as it goes. A batch of new entries joins the open round: its raw events
are copied while the next batch is read and mapped, so decoding overlaps the database work.
The round commits (rollup merged once, then XACK) when nothing more is waiting, when it is
large or old enough, or on stop. Redelivered entries (an earlier life, claims, a failed
round) never join a round: they are committed batch by batch, the careful way (stored
events probed first, a failing entry isolated). Entries are acknowledged only after their
own commit, so a crash at any point leaves them pending, and an abandoned round or batch
changes nothing.

States of a round: open (``_round``; batches join it, each copied in a task) -> closing
(``_closing``: merging its rollup and committing while the next round opens) -> committed
and acknowledged, or discarded (rolled back; its entries stay pending and are re-read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import date

from ...exporter.runtime.logconfig import correlated, new_correlation_id
from ..storage.schema import existing_partitions
from .batches import Batch, Round, uncount_rereads
from .maintenance import PartitionsMissing
from .preparing import Preparing
from .raw import copy_raw, is_duplicate_key
from .retry import describe, is_transient

ROUND_MAX_EVENTS = 250_000
ROUND_MAX_KEYS = 40_000
ROUND_MAX_S = 2.0
"""A round (one transaction over consecutive batches) commits at about this many events, rollup
keys (~600 B each in memory) or seconds, whichever comes first; with nothing more waiting on the
bus it commits at once, so the bounds matter only under a backlog."""

_log = logging.getLogger(__name__)


class Rounds(Preparing):
    """Opens, joins, commits and discards rounds (see the module docstring)."""

    async def _join_round(self, batch: Batch) -> None:
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
                round_ = self._round = Round(conn, transaction, batch.rollup, cid)
            await self._settle_copy(round_)
        except BaseException as exc:
            if self._round is not None:
                self._round = None
                await self._discard_round(round_, exc)  # type: ignore[arg-type]
            self._pending_dirty = True
            uncount_rereads(batch)
            self._add_totals(batch.result)
            if isinstance(exc, Exception) and not is_transient(exc):
                return  # logged by the discard; the careful way takes over
            raise
        round_.batches.append(batch)
        round_.copying = asyncio.create_task(self._copy_batch(round_, batch, days))

    async def _settle_copy(self, round_: Round) -> None:
        """Wait for the batch being copied into ``round_`` (its error is the round's)."""
        if round_.copying is not None:
            task, round_.copying = round_.copying, None
            await task

    async def _copy_batch(self, round_: Round, batch: Batch, days: set[date]) -> None:
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
            await copy_raw(round_.conn, prepared.rows, self.settings.postgres_schema_variant)
            round_.events += len(prepared.rows)
            batch.result.events_inserted += len(prepared.rows)  # counted in the totals at the commit
            # Only the ids stay for the acknowledgement: the round holds no event once copied.
            prepared.rows, prepared.by_entry, prepared.fields = [], {}, {}

    def _round_is_due(self, round_: Round) -> bool:
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

    async def _commit_round(self, round_: Round, stop: asyncio.Event | None) -> None:
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

    async def _discard_round(self, round_: Round, exc: BaseException | None) -> None:
        """Roll the round back; its entries stay pending and are read again, carefully."""
        with correlated(round_.cid):
            self._pending_dirty = True
            if exc is not None:
                self.last_error = describe(exc)
                if is_duplicate_key(exc):
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
                uncount_rereads(batch)
                self._add_totals(batch.result)

    async def _release(self, round_: Round) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):  # a pool dropped meanwhile closes it itself
                await self.pool.release(round_.conn)
