"""Preparing a batch: claim, read and map entries, counting new events into the round's rollup.

Decoding and mapping are Python CPU work; they overlap the database work of the round in
flight (see rounds.py). Undecodable entries, and entries delivered too often, are dead-lettered
on the way; events the rollups cannot use are refused (dead-lettered with their entry's XACK).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...exporter import wire
from ...exporter.admission import EventWindow
from ...exporter.runtime.logconfig import correlated
from .batches import Batch, Entry, Prepared, ReadResponse
from .careful import Careful
from .liveness import CLAIM_INTERVAL_S
from .mapping import (
    EventRow,
    Refusal,
    rows_from_span,
    screen,
)
from .retry import describe
from .rollups import Rollup, RollupInputError

_log = logging.getLogger(__name__)


class Preparing(Careful):
    """Turns one read into a :class:`~.batches.Batch` of prepared streams."""

    async def _prepare(self, block_ms: int | None, read_pending: bool, rollup: Rollup) -> Batch:
        """Claim, read and map one batch (dead-letters undecodable entries on the way).

        Own pending entries (earlier life, claimed, left for a retry) come before new ones; they
        are looked for only when ``read_pending`` (no round or batch of this member is in
        flight, whose entries would show up as pending too) and something may have left them.
        New entries are counted into ``rollup`` as they are mapped.
        """
        batch = Batch()
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

    async def _prepare_entries(self, stream: str, entries: list[Entry], batch: Batch) -> Prepared | None:
        assert self.redis is not None
        result = batch.result
        result.entries += len(entries)
        counts: dict[bytes, int] = {}
        if batch.redelivered:
            counts = await self._delivery_counts(stream, [entry_id for entry_id, _ in entries])
        prepared = Prepared(stream, counts=counts, careful=batch.redelivered)
        gone: list[bytes] = []
        window = EventWindow.of(self.settings)
        await self.tombstone.refresh(self.redis)
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
                kept_spans = self.tombstone.keep_records(spans)  # erased learners' late events go
                rows = [row for record in kept_spans for row in rows_from_span(record)]
            except Exception as exc:  # undecodable or unmappable: retrying cannot help
                await self._dead_letter(stream, entry_id, fields, describe(exc), attempts)
                result.dead_lettered += 1
                continue
            rows = await self.custom_gate.split(self.pool, self.redis, self.settings, rows)  # invalid: failed
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
                unusable_rows = unusable(kept)
                if unusable_rows:
                    refused += unusable_rows
                    bad = {r.event_id for r in unusable_rows}
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


def unusable(rows: list[EventRow]) -> list[Refusal]:
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
