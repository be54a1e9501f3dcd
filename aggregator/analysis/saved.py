"""Saved funnels: named, versioned definitions in PostgreSQL, answered from a cache.

**How a saved funnel stays fast and exact.** A version's definition never changes (revision
0014: rows are only inserted), and the event-sequence store's content changes exactly when its
``generation`` does (``loader.AnalysisStore``). A saved funnel's answer is therefore a function
of (name, version, generation, k, breakdown limit): it is computed by the same engine as the
ad hoc route (so it gives the same numbers, by construction and by test), kept under that key,
and served from memory until the store next changes. :class:`AnswerCache` holds them and
:func:`warm` recomputes the latest version of every saved funnel right after a refresh that
changed the store, off the request path, so a read is a dictionary look-up (plus the
definition's row and the audit row). Nothing is kept per learner, so the aggregator's
crashes and restarts do not concern these answers: they are recomputed from the stored events,
which the aggregator already stores exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .definitions import FunnelDefinition
from .reports import FunnelResult, funnel_report
from .store import EventStore

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_SAVED = 200
"""Most saved funnel names (their latest versions are warmed after each change of the store)."""
CACHE_LIMIT = 1000


@dataclass(frozen=True)
class SavedFunnel:
    name: str
    version: int
    definition: FunnelDefinition
    created_by: str
    created_at: datetime


def _saved(record: asyncpg.Record) -> SavedFunnel:
    return SavedFunnel(
        name=record["name"],
        version=record["version"],
        definition=FunnelDefinition.model_validate_json(record["definition"]),
        created_by=record["created_by"],
        created_at=record["created_at"],
    )


INSERT = """
INSERT INTO saved_funnels (name, version, definition, created_by)
SELECT $1, coalesce(max(version), 0) + 1, $2::jsonb, $3 FROM saved_funnels WHERE name = $1
RETURNING name, version, definition::text AS definition, created_by, created_at
"""
COLUMNS = "name, version, definition::text AS definition, created_by, created_at"
LATEST = f"""
SELECT DISTINCT ON (name) {COLUMNS} FROM saved_funnels ORDER BY name, version DESC LIMIT $1
"""
ONE = f"""
SELECT {COLUMNS} FROM saved_funnels
WHERE name = $1 AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1
"""


class TooMany(Exception):
    """There are :data:`MAX_SAVED` names already."""


async def save(conn: asyncpg.Connection, name: str, definition: FunnelDefinition, actor: str) -> SavedFunnel:
    """Store ``definition`` as the next version of ``name`` (1 if new)."""
    body = definition.model_dump(mode="json")  # the connection's jsonb codec encodes it
    for attempt in range(5):
        try:
            async with conn.transaction():
                names = await conn.fetchval("SELECT count(DISTINCT name) FROM saved_funnels")
                known = await conn.fetchval("SELECT 1 FROM saved_funnels WHERE name = $1 LIMIT 1", name)
                if known is None and names >= MAX_SAVED:
                    raise TooMany(name)
                record = await conn.fetchrow(INSERT, name, body, actor)
        except asyncpg.UniqueViolationError:  # two saves of one name at once: the next version
            if attempt == 4:
                raise
            continue
        assert record is not None
        return _saved(record)
    raise AssertionError("unreachable")


async def latest(conn: asyncpg.Connection | asyncpg.Pool) -> list[SavedFunnel]:
    return [_saved(r) for r in await conn.fetch(LATEST, MAX_SAVED)]


async def one(conn: asyncpg.Connection | asyncpg.Pool, name: str, version: int | None) -> SavedFunnel | None:
    record = await conn.fetchrow(ONE, name, version)
    return None if record is None else _saved(record)


Key = tuple[str, int, int, int, int]
"""(name, version, store generation, k, breakdown limit)"""


class AnswerCache:
    """Answers of saved funnel versions at one store generation (older generations are dropped)."""

    def __init__(self) -> None:
        self.answers: dict[Key, FunnelResult] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Key) -> FunnelResult | None:
        found = self.answers.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: Key, result: FunnelResult) -> None:
        generation = key[2]
        stale = [k for k in self.answers if k[2] != generation]
        for k in stale:
            del self.answers[k]
        if len(self.answers) >= CACHE_LIMIT:
            self.answers.pop(next(iter(self.answers)))
        self.answers[key] = result


def compute_all(
    store: EventStore, funnels: list[SavedFunnel], k: int, limit: int
) -> list[tuple[SavedFunnel, FunnelResult]]:
    """Every funnel's answer on ``store`` (run in a thread under the store's lock)."""
    return [(f, funnel_report(store, f.definition, k, limit)) for f in funnels]
