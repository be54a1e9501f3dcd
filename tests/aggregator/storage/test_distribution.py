"""The schema stays distributable by user hash (docs/scaling-postgres.md), read from the catalog.

Every table of the schema is either per-user (it carries ``user_hash``, the distribution
column a Citus cluster would hash) or one of the few named system-wide tables. Citus needs the
distribution column in every primary key and unique constraint of a distributed table and all
co-located tables need it of one type; the rollups keyed by user already satisfy that, the
known exception is listed with what would have to change, and the test fails when either list
goes stale.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect

DISTRIBUTION_COLUMN = "user_hash"

SYSTEM_WIDE = {
    "system_metrics": "per minute, route and method: no user",
    "system_metrics_hourly": "per hour, route and method (the minutes summed): no user",
    "hourly_analytics_summary": "per hour over all learners (the dashboard): no user",
    "daily_learners": "learners per day over all learners (the cohort route, 0023): no user",
    "access_audit_log": "pseudonyms of actor and subject, append-only: stays on the coordinator",
    "alembic_version": "migration bookkeeping",
    "custom_event_schemas": "the custom event registry (a few rows per type): no user",
    "custom_event_daily": "per day and custom event type over all learners: no user",
    "experiment_versions": "experiment definitions, a few rows: a reference table",
    "experiment_variant_sums": "per experiment, variant and metric over all learners: no user",
    "experiment_variant_day_sums": "per experiment, variant, metric and day over all learners: no user",
    "rollup_rebuilds": "a rebuild's progress per table (0016_rebuild): no user",
    "schema_variant": "the variant the schema was migrated as (one row)",
    "saved_funnels": "staff's funnel definitions by name (created_by: the author's pseudonym): no learner",
}
"""Tables without the distribution column, and why (reference or coordinator-local under Citus)."""

KEY_GAPS = {
    "analytics_events": "PK (event_id, occurred_at) -> (user_hash, event_id, occurred_at); "
    "user_hash NOT NULL (a sentinel for events without a learner: api_request)",
}
"""Per-user tables whose keys Citus would not accept on the plain variant: the citus variant
(revision 0017_citus_variant) makes exactly that change."""

CITUS_SYSTEM_WIDE = {
    **SYSTEM_WIDE,
    "analytics_system_events": "raw events without a learner (API requests): stays on the coordinator",
}


def _expected(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """System-wide tables and key gaps of the settings' schema variant."""
    if settings.postgres_schema_variant == "citus":
        return CITUS_SYSTEM_WIDE, {}
    return SYSTEM_WIDE, KEY_GAPS


@dataclass
class Table:
    columns: dict[str, tuple[str, bool]]
    """name -> (type, NOT NULL)"""
    keys: list[list[str]]
    """Column lists of the primary key, unique constraints and unique indexes."""


async def _catalog(conn: asyncpg.Connection, schema: str) -> dict[str, Table]:
    """Every table of ``schema`` (partitions are their parent's) as the catalog has it."""
    tables = await conn.fetch(
        "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
        schema,
    )
    out: dict[str, Table] = {}
    for table in tables:
        columns = await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull FROM pg_attribute "
            "WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            table["oid"],
        )
        keys = await conn.fetch(
            "SELECT con.contype, ARRAY(SELECT a.attname FROM unnest(con.conkey) AS k(n) "
            "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n) AS cols "
            "FROM pg_constraint con WHERE con.conrelid = $1 AND con.contype IN ('p', 'u')",
            table["oid"],
        )
        unique_indexes = await conn.fetch(
            "SELECT ARRAY(SELECT a.attname FROM unnest(i.indkey) AS k(n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) AS cols "
            "FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique",
            table["oid"],
        )
        out[table["relname"]] = Table(
            columns={c["attname"]: (c["type"], c["attnotnull"]) for c in columns},
            keys=[list(k["cols"]) for k in keys] + [list(i["cols"]) for i in unique_indexes],
        )
    return out


async def test_every_per_user_table_carries_the_distribution_column(each_variant: Settings) -> None:
    migrated = each_variant
    system_wide, key_gaps = _expected(migrated)
    conn = await connect(migrated)
    try:
        catalog = await _catalog(conn, migrated.postgres_schema)
    finally:
        await conn.close()
    # analytics_system_events has the column, always NULL (a CHECK says so): system-wide by name.
    per_user = {
        name
        for name, table in catalog.items()
        if DISTRIBUTION_COLUMN in table.columns and name not in system_wide
    }
    # Every table is classified: a new table is per-user or is named here with a reason.
    assert set(catalog) - per_user == set(system_wide)
    assert per_user >= set(key_gaps)
    assert per_user == {
        "analytics_events",
        "learning_sessions",
        "daily_activity_summary",
        "gamification_stats",
        "user_activity_hourly",
        "ai_coach_metrics",
        "experiment_learners",
        "analysis_learners",
    }
    # Co-location needs one type for the distribution column everywhere.
    types = {catalog[name].columns[DISTRIBUTION_COLUMN][0] for name in per_user}
    assert types == {"text"}
    # No pseudonym hides under another name in a per-user table (it could not be co-located).
    # The one exception, a link: analysis_learners.previous_hash is the same learner's pseudonym under
    # the previous key (0020_funnels_finish), read whole by the API, never joined on.
    for name in per_user:
        others = [c for c in catalog[name].columns if c.endswith("_hash") and c != DISTRIBUTION_COLUMN]
        assert others == (["previous_hash"] if name == "analysis_learners" else []), name


async def test_distribution_column_is_in_every_key_except_the_documented_gaps(each_variant: Settings) -> None:
    migrated = each_variant
    conn = await connect(migrated)
    try:
        catalog = await _catalog(conn, migrated.postgres_schema)
    finally:
        await conn.close()
    gaps: set[str] = set()
    for name, table in catalog.items():
        if DISTRIBUTION_COLUMN not in table.columns or name in CITUS_SYSTEM_WIDE:
            continue
        assert table.keys, f"{name} has no primary key: the consumer's upserts need one"
        not_null = table.columns[DISTRIBUTION_COLUMN][1]
        if not (not_null and all(DISTRIBUTION_COLUMN in key for key in table.keys)):
            gaps.add(name)
    # Rollups keyed by learner (the API's per-user reads) and sessions (keyed by learner since
    # revision 0007) are distributable as they are; the raw events are the known gap, with what
    # would change in KEY_GAPS, made by the citus variant.
    assert gaps == set(_expected(migrated)[1])
