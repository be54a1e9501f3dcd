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
