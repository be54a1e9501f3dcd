"""What a batch and a round carry between the steps of the consumer (plain data, no I/O)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ...exporter import wire
from .mapping import RawRecord, Refusal
from .rollups import Rollup

Entry = tuple[bytes, dict[bytes, bytes] | None]
ReadResponse = Any  # [[stream, [Entry, ...]], ...] as redis-py returns it for RESP2


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
class Prepared:
    """One stream's entries of a batch, decoded, mapped and rolled up (in Python, not yet stored)."""

    stream: str
    ids: list[bytes] = field(default_factory=list)
    rows: list[RawRecord] = field(default_factory=list)
    """The raw events (an event may repeat: see ``Preparing._prepare_entries``)."""
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
class Batch:
    """One read, prepared: per stream, the entries to commit."""

    result: BatchResult = field(default_factory=BatchResult)
    streams: list[Prepared] = field(default_factory=list)
    redelivered: bool = False
    cid: str | None = None
    """Correlation id of the batch's log records: ``batch-<first entry id>``."""
    rollup: Rollup | None = None
    """Where the batch's events were counted as they were mapped (the open round's rollup), if
    they all turn out new; ``None`` for redelivered entries, and after a :class:`RollupInputError`
    (which may have left a part of an entry counted)."""


@dataclass
class Round:
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
    batches: list[Batch] = field(default_factory=list)
    copying: asyncio.Task[None] | None = None


def uncount_rereads(batch: Batch) -> None:
    """Take back what ``batch`` counted of entries that stay pending (read again, counted then):
    totals count each read that took effect, and dead letters."""
    result = batch.result
    result.events_inserted = 0
    for prepared in batch.streams:
        result.entries -= len(prepared.ids)
        result.events_seen -= prepared.seen
        result.events_expired -= prepared.expired
