"""Bus entries -> POST batches of xAPI statements (pure): the forwarder's core before any I/O.

Input is what a consumer reads: ``(entry id, event rows)`` pairs in bus order. Each row is mapped once
(:class:`.xapi.StatementMapper`) and serialised once; a batch holds at most ``max_statements`` statements and
``max_bytes`` of JSON, so the POST body is the parts joined, never re-encoded. An entry may be acknowledged
only when every statement it gave has been delivered or isolated: each batch lists the entries it
*completes* (their last statement is in it, or they gave none), and batches go out in order.

A statement id seen earlier in the same plan is dropped (an event delivered twice on the bus: same event id,
same statement id), because an LRS refuses one id twice in a batch (Ralph: 400).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from ..consumer.mapping import EventRow
from .xapi import Skipped, SkipReason, StatementMapper

DEFAULT_MAX_STATEMENTS = 100
"""Statements per POST (Learning Locker and Ralph take far more; small batches bound a refused batch's
splitting to a few requests)."""
DEFAULT_MAX_BYTES = 1_000_000
"""JSON bytes per POST: under the 1 MB body limit common in front of LRSs (a statement is ~0.6-2 KB;
a session end touching 200 materials ~20 KB)."""


class Item(NamedTuple):
    """One statement on its way: where it came from and its JSON."""

    entry_id: str
    event_id: str
    statement_id: str
    json: bytes


class Batch(NamedTuple):
    items: tuple[Item, ...]
    completes: tuple[str, ...]
    """Entry ids that may be acknowledged once this batch (and every batch before it) is delivered."""

    def body(self) -> bytes:
        return body_of(self.items)


class InvalidEvent(NamedTuple):
    entry_id: str
    event_id: str
    detail: str


@dataclass
class Plan:
    batches: list[Batch] = field(default_factory=list)
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    invalid: list[InvalidEvent] = field(default_factory=list)
    """Events whose fields do not validate: for the dead-letter stream, with the field and the reason."""
    duplicates: int = 0

    @property
    def statements(self) -> int:
        return sum(len(batch.items) for batch in self.batches)


def body_of(items: Sequence[Item]) -> bytes:
    """The POST body of ``items``: a JSON array of their statements."""
    return b"[" + b",".join(item.json for item in items) + b"]"


class _Builder:
    def __init__(self, max_statements: int, max_bytes: int) -> None:
        if max_statements < 1 or max_bytes < 2:
            raise ValueError("a batch must hold at least one statement")
        self.max_statements, self.max_bytes = max_statements, max_bytes
        self.plan = Plan()
        self.items: list[Item] = []
        self.size = 2  # the brackets
        self.completes: list[str] = []

    def add(self, item: Item) -> None:
        grown = self.size + len(item.json) + (1 if self.items else 0)
        if self.items and (len(self.items) >= self.max_statements or grown > self.max_bytes):
            self.close()
            grown = 2 + len(item.json)
        self.items.append(item)
        self.size = grown  # one statement larger than max_bytes still goes, alone

    def close(self) -> None:
        if self.items or self.completes:
            self.plan.batches.append(Batch(tuple(self.items), tuple(self.completes)))
        self.items, self.size, self.completes = [], 2, []


def plan_batches(
    entries: Iterable[tuple[str, Sequence[EventRow]]],
    mapper: StatementMapper,
    *,
    max_statements: int = DEFAULT_MAX_STATEMENTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Plan:
    """The batches that deliver ``entries``' statements, in bus order."""
    builder = _Builder(max_statements, max_bytes)
    seen: set[str] = set()
    dumps = orjson.dumps
    for entry_id, rows in entries:
        for row in rows:
            statement = mapper.map(row)
            if isinstance(statement, Skipped):
                builder.plan.skipped[statement.reason] += 1
                if statement.reason is SkipReason.INVALID_EVENT:
                    builder.plan.invalid.append(InvalidEvent(entry_id, str(row.event_id), statement.detail))
                continue
            if statement["id"] in seen:
                builder.plan.duplicates += 1
                continue
            seen.add(statement["id"])
            builder.add(Item(entry_id, str(row.event_id), statement["id"], dumps(statement)))
        builder.completes.append(entry_id)
    builder.close()
    return builder.plan
