"""The careful way: redelivered entries committed batch by batch, a failing entry isolated.

Stored events are probed first (a redelivered entry may be stored already), a batch that fails
with a data error is retried entry by entry, and an entry at its last delivery attempt is
committed by halves so that only the events PostgreSQL refuses are dead-lettered. Entries are
acknowledged after their own commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import date

import asyncpg

from ...exporter import wire
from . import rollups
from .batches import Batch, BatchResult, Prepared
from .liveness import Liveness
from .mapping import (
    RawRecord,
    Refusal,
)
from .raw import is_duplicate_key
from .retry import Backoff, describe, is_transient
from .rollups import Rollup

RACE_ATTEMPTS = 5
"""Transactions of one batch that may meet events another member is inserting at that moment."""

_log = logging.getLogger(__name__)


class Careful(Liveness):
    """Commits of prepared batches on their own (one transaction each), then XACK."""

    async def _commit_batch(self, batch: Batch, stop: asyncio.Event | None) -> None:
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

    async def _commit_entries(
        self, prepared: Prepared, result: BatchResult, stop: asyncio.Event | None
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
        self, prepared: Prepared, result: BatchResult, counts: dict[bytes, int], stop: asyncio.Event | None
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
                        describe(exc),
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
                        describe(exc),
                    )
        if good:
            await self._acknowledge(prepared, good, result, stop)

    async def _bisect(
        self, prepared: Prepared, entry_id: bytes, result: BatchResult, stop: asyncio.Event | None
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
                    refused.append(Refusal(part[0][0], part[0][2], f"PostgreSQL refused it: {describe(exc)}"))
                else:
                    parts += [part[: len(part) // 2], part[len(part) // 2 :]]
        if refused:
            prepared.refused.setdefault(entry_id, []).extend(refused)
            prepared.spans.setdefault(entry_id, wire.decode_entry(prepared.fields[entry_id]))

    async def _acknowledge(
        self, prepared: Prepared, ids: list[bytes], result: BatchResult, stop: asyncio.Event | None
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
                self.last_error = describe(exc)
                _log.debug("PostgreSQL unavailable (%s); retrying the batch", self.last_error)
                await self._drop_pool()  # logged once per outage (postgres_ok)
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
                        inserted = await rollups.insert_events(
                            conn, rows, rollup, careful=careful, variant=self.settings.postgres_schema_variant
                        )
                    break
                except asyncpg.PostgresError as exc:
                    # Stored already (redelivered) or inserted by another member meanwhile (see
                    # rollups): again, leaving out what is stored by then.
                    if not is_duplicate_key(exc) or attempt == RACE_ATTEMPTS - 1:
                        raise
                    careful = True
        self.postgres_ok = True
        if self.on_transaction is not None:
            self.on_transaction(len(rows), inserted, time.monotonic() - started)
        return inserted
