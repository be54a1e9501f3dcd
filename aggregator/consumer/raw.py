"""The raw events' table(s) per schema variant: the ``COPY``, the stored-events probe, duplicates.

On the ``plain`` variant every event goes to ``analytics_events``, keyed ``(event_id,
occurred_at)``. On the ``citus`` variant (``aggregator/storage/variant.py``) events with a learner
go there keyed ``(user_hash, event_id, occurred_at)``, those without one to
``analytics_system_events``; the probe of each table names its whole key, so it seeks the primary
key (a probe without ``user_hash`` cannot: 62-107 s per 10k probes instead of 65 ms, measured)
and, on Citus, each probe row carries the distribution column.

A distributed engine reports a stored event met by its ``COPY`` as SQLSTATE ``XX000`` with
PostgreSQL's "duplicate key value violates unique constraint" text (Citus 13.2.2, measured), not
as ``23505``: :func:`is_duplicate_key` recognises both, so the in-place retry of a round or batch
that met stored events fires on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ..storage.variant import LEARNERLESS_TABLE, Variant
from .mapping import RAW_COLUMNS, RawRecord

RAW_TABLE = "analytics_events"
PROBE_MARK = "/* stored-events probe */"
"""Opens every probe's text (tests find the probes in ``pg_stat_activity`` by it)."""

_PROBE_BY_ID = (
    PROBE_MARK
    + """
SELECT s.event_id
FROM unnest($1::uuid[], $2::timestamptz[]) AS n(event_id, occurred_at)
JOIN {table} AS s ON s.event_id = n.event_id AND s.occurred_at = n.occurred_at
"""
)
_PROBE_BY_LEARNER = (
    PROBE_MARK
    + f"""
SELECT s.event_id
FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS n(user_hash, event_id, occurred_at)
JOIN {RAW_TABLE} AS s
  ON s.user_hash = n.user_hash AND s.event_id = n.event_id AND s.occurred_at = n.occurred_at
"""
)
DUPLICATE_TEXT = "duplicate key value violates unique constraint"


def split(records: Sequence[RawRecord]) -> tuple[list[RawRecord], list[RawRecord]]:
    """``records`` with a learner (``user_hash``) and those without, each in their order."""
    with_learner: list[RawRecord] = []
    without: list[RawRecord] = []
    for record in records:
        (without if record[3] is None else with_learner).append(record)
    return with_learner, without


async def copy_raw(conn: asyncpg.Connection, records: Sequence[RawRecord], variant: Variant) -> None:
    """Binary ``COPY`` of ``records`` into the raw table(s) of ``variant``."""
    if variant == "plain":
        await conn.copy_records_to_table(RAW_TABLE, records=records, columns=RAW_COLUMNS)
        return
    with_learner, without = split(records)
    if with_learner:
        await conn.copy_records_to_table(RAW_TABLE, records=with_learner, columns=RAW_COLUMNS)
    if without:
        await conn.copy_records_to_table(LEARNERLESS_TABLE, records=without, columns=RAW_COLUMNS)


async def probe_stored(conn: asyncpg.Connection, records: Sequence[RawRecord], variant: Variant) -> set[Any]:
    """Ids of ``records`` already stored: one primary-key probe each (:func:`.rollups.stored_event_ids`)."""
    if variant == "plain":
        return await _probe_by_id(conn, RAW_TABLE, records)
    with_learner, without = split(records)
    found: set[Any] = set()
    if with_learner:
        rows = await conn.fetch(
            _PROBE_BY_LEARNER,
            [r[3] for r in with_learner],
            [r[0] for r in with_learner],
            [r[1] for r in with_learner],
        )
        found.update(row[0] for row in rows)
    if without:
        found |= await _probe_by_id(conn, LEARNERLESS_TABLE, without)
    return found


async def _probe_by_id(conn: asyncpg.Connection, table: str, records: Sequence[RawRecord]) -> set[Any]:
    rows = await conn.fetch(
        _PROBE_BY_ID.format(table=table), [r[0] for r in records], [r[1] for r in records]
    )
    return {row[0] for row in rows}


def is_duplicate_key(exc: BaseException) -> bool:
    """``exc`` says a unique key met a stored row: PostgreSQL's ``23505`` or a distributed
    engine's ``XX000`` carrying PostgreSQL's text (Citus's ``COPY``)."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return True
    return (
        isinstance(exc, asyncpg.PostgresError)
        and getattr(exc, "sqlstate", None) == "XX000"
        and DUPLICATE_TEXT in str(exc)
    )
