"""Raw events as a test reads them back, whatever the schema variant (storage/variant.py)."""

from __future__ import annotations

import asyncpg

from studyin_analytics.aggregator.storage.variant import LEARNERLESS_TABLE


async def raw_count(conn: asyncpg.Connection, where: str = "") -> int:
    """Stored raw events (``where``: a condition on their columns): ``analytics_events`` and, on
    the citus variant, the learner-less events of ``analytics_system_events``."""
    condition = f" WHERE {where}" if where else ""
    total = int(await conn.fetchval(f"SELECT count(*) FROM analytics_events{condition}"))
    if await conn.fetchval("SELECT to_regclass($1)", LEARNERLESS_TABLE) is not None:
        total += int(await conn.fetchval(f"SELECT count(*) FROM {LEARNERLESS_TABLE}{condition}"))
    return total


async def raw_event_ids(conn: asyncpg.Connection) -> set[object]:
    """The ids of the stored raw events, of both raw tables on the citus variant (see :func:`raw_count`)."""
    ids = {r[0] for r in await conn.fetch("SELECT event_id FROM analytics_events")}
    if await conn.fetchval("SELECT to_regclass($1)", LEARNERLESS_TABLE) is not None:
        ids |= {r[0] for r in await conn.fetch(f"SELECT event_id FROM {LEARNERLESS_TABLE}")}
    return ids
