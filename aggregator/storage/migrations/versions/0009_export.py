"""Warehouse export: rollup rows carry the id of the transaction that last changed them, and the
exporter gets a role of its own and a schema for its Iceberg catalog.

Revision ID: 0009_export
Revises: 0008
Create Date: 2026-12-03

``changed_xid`` on every rollup table is to rollup rows what ``stored_xid`` (0008) is to raw
events: the id of the transaction that inserted the row (column default) or last updated it (the
merge SQL sets ``changed_xid = DEFAULT``, ``aggregator/consumer/rollup_sql.py``). The exporter reads
``changed_xid >= previous xmin AND changed_xid < pg_snapshot_xmin(current snapshot)`` and so
finds every row that changed since its previous step, each version once. Deliberately **no
index**: an index on a column every upsert changes would turn the aggregator's HOT updates into
index updates on its hot path; the exporter scans the rollup tables instead
(docs/export.md).

The exporter's role (``STUDYIN_ANALYTICS_EXPORT_POSTGRES_ROLE``, default ``studyin_exporter``)
may read the raw and rollup tables and nothing else of the analytics schema; it owns its
catalog schema (``STUDYIN_ANALYTICS_EXPORT_CATALOG_SCHEMA``, default ``<schema>_iceberg``),
where pyiceberg's SQL catalog creates its two tables on first use. Existing rows get this
migration's transaction id (older than anything stored later), so a first export takes them all.
"""

import re

from alembic import context, op

revision = "0009_export"
down_revision = "0008"
branch_labels = None
depends_on = None

ROLLUP_TABLES = (
    "learning_sessions",
    "daily_activity_summary",
    "gamification_stats",
    "user_activity_hourly",
    "ai_coach_metrics",
    "system_metrics",
    "hourly_analytics_summary",
)
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _names() -> tuple[str, str, str]:
    """Schema, exporter role and catalog schema (``schema.alembic_config`` passes them)."""
    attributes = context.config.attributes
    schema = attributes["schema"]
    role = attributes.get("exporter_role") or "studyin_exporter"
    catalog = attributes.get("export_catalog_schema") or f"{schema}_iceberg"[:63]
    for name in (schema, role, catalog):
        if not _NAME.match(name):
            raise ValueError(f"not a plain lower-case SQL name: {name!r}")
    return schema, role, catalog


def upgrade() -> None:
    from alembic.script import ScriptDirectory

    # The role creation of revision 0004 (safe concurrently, refuses superuser roles).
    roles = ScriptDirectory.from_config(context.config).get_revision("0004")
    assert roles is not None
    create_role_sql = roles.module.create_role_sql
    schema, role, catalog = _names()
    for table in ROLLUP_TABLES:
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS changed_xid bigint NOT NULL "
            "DEFAULT (pg_current_xact_id()::text::bigint)"
        )
    op.execute(create_role_sql(role))
    op.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    op.execute(f'GRANT SELECT ON analytics_events, {", ".join(ROLLUP_TABLES)} TO "{role}"')
    op.execute(f'CREATE SCHEMA IF NOT EXISTS "{catalog}"')
    op.execute(f'GRANT USAGE, CREATE ON SCHEMA "{catalog}" TO "{role}"')


def downgrade() -> None:
    schema, role, _catalog = _names()
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', '{schema}', '{role}');
                EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', '{schema}', '{role}');
            END IF;
        END
        $$
        """
    )
    for table in ROLLUP_TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS changed_xid")
    # The catalog schema and its tables stay: they describe exported data that outlives this.
