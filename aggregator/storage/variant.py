"""The schema variant: plain (one PostgreSQL) or citus (ready to distribute by ``user_hash``).

Chosen by ``STUDYIN_ANALYTICS_POSTGRES_SCHEMA_VARIANT`` at the first migration (revision
``0017_citus_variant``) and recorded in the one-row table ``schema_variant``; every service that
writes raw events reads the record and refuses to start when its own setting names another one.

* events with a learner: ``analytics_events``; key ``(event_id, occurred_at)`` on ``plain``,
  ``(user_hash, event_id, occurred_at)`` with ``user_hash NOT NULL`` on ``citus``;
* events without one (API requests): ``analytics_events`` (``user_hash NULL``) on ``plain``,
  ``analytics_system_events`` (a local table under Citus) on ``citus``;
* the stored-events probe names the key of each table (``aggregator/consumer/raw.py``);
* ``learning_sessions`` is keyed ``(user_hash, session_id)`` on both (revision 0007).
"""

from __future__ import annotations

from typing import Literal, get_args

import asyncpg

from ...instrumentation.settings_base import ENV_PREFIX, ConfigurationError

Variant = Literal["plain", "citus"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
VARIANT_TABLE = "schema_variant"
LEARNERLESS_TABLE = "analytics_system_events"
"""The citus variant's raw events without a learner (API requests): partitioned by day like
``analytics_events``, never distributed (Citus refuses ``NULL`` in the distribution column)."""

DISTRIBUTED_TABLES = (
    "gamification_stats",
    "daily_activity_summary",
    "user_activity_hourly",
    "ai_coach_metrics",
    "learning_sessions",
    "analytics_events",
)
"""The per-learner tables of the citus variant, in co-location order: the first is distributed
alone, every other one ``colocate_with`` it, so one learner's rows of all of them share a shard."""


class VariantMismatch(ConfigurationError):
    """The database was migrated as another variant than the setting names (exit 2)."""


async def recorded_variant(conn: asyncpg.Connection) -> Variant:
    """The variant this schema was migrated as (``plain`` for a schema older than the record)."""
    if await conn.fetchval("SELECT to_regclass($1)", VARIANT_TABLE) is None:
        return "plain"
    value = await conn.fetchval(f"SELECT variant FROM {VARIANT_TABLE}")
    return "plain" if value is None else value


def mismatch(schema: str, recorded: str, configured: str) -> VariantMismatch | None:
    """The error to raise when ``configured`` is not the ``recorded`` variant (else ``None``)."""
    if recorded == configured:
        return None
    return VariantMismatch(
        f"schema {schema!r} was migrated as the {recorded!r} variant but "
        f"{ENV_PREFIX}POSTGRES_SCHEMA_VARIANT is {configured!r}: set it to {recorded!r} "
        "(a variant is chosen once, at the first migration)"
    )


async def check_variant(conn: asyncpg.Connection, schema: str, configured: str) -> None:
    """Raise :class:`VariantMismatch` unless the schema was migrated as ``configured``."""
    error = mismatch(schema, await recorded_variant(conn), configured)
    if error is not None:
        raise error
