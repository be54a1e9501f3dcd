"""Rollup rebuilds: a role with exactly the rights a rebuild needs, and its progress table.

Revision ID: 0016_rebuild
Revises: 0015_erasure
Create Date: 2026-12-03

``studyin-analytics rollups rebuild`` recomputes the rollups raw events can rebuild, one UTC day
per transaction (``aggregator/consumer/rebuild.py``, docs/aggregator.md "Rebuilding rollups").
It runs as the role ``STUDYIN_ANALYTICS_POSTGRES_REBUILD_ROLE`` (default ``studyin_rebuilder``):

==========================================  ==============================================
object                                      rebuild role
==========================================  ==============================================
schema                                      USAGE
``analytics_events`` (raw)                  SELECT (the events of the day being rebuilt)
``learning_sessions``                       SELECT (what sessions count; never rebuilt)
rebuildable rollup tables                   SELECT, INSERT, DELETE (a day's rows replaced)
``rollup_rebuilds`` (progress)              SELECT, INSERT, UPDATE, DELETE
``gamification_stats``                      -- (all-time state: not rebuildable)
database                                    CONNECT
==========================================  ==============================================

No UPDATE on rollups (a day's rows are deleted and inserted), no TRUNCATE, no DDL, no raw
INSERT. The advisory lock that hands a day over between a rebuild and live rounds needs no
grant. ``rollup_rebuilds`` holds one row per table being rebuilt (the day the rebuild began at
and the last day committed), so a rebuild killed midway resumes after its last committed day;
the row goes when the rebuild completes.
"""

import re

from alembic import context, op

revision = "0016_rebuild"
down_revision = "0015_erasure"
branch_labels = None
depends_on = None

PROGRESS_TABLE = "rollup_rebuilds"
REBUILDABLE_TABLES = (
    "daily_activity_summary",
    "user_activity_hourly",
    "ai_coach_metrics",
    "system_metrics",
    "hourly_analytics_summary",
    "system_metrics_hourly",
    "custom_event_daily",
)
"""The tables of ``aggregator.consumer.rebuild_tables.REBUILDS`` when this revision was written
(a test keeps them in step; a later rollup grants its own table in its own revision)."""
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _names() -> tuple[str, str]:
    attributes = context.config.attributes
    schema = attributes["schema"]
    role = attributes.get("rebuild_role") or "studyin_rebuilder"
    for name in (schema, role):
        if not _NAME.match(name):
            raise ValueError(f"not a plain lower-case SQL name: {name!r}")
    return schema, role


def upgrade() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(context.config)
    roles = scripts.get_revision("0004")  # role creation and database grants of revision 0004
    assert roles is not None
    schema, role = _names()
    op.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (
            table_name    text PRIMARY KEY,
            from_day      date NOT NULL,
            done_through  date,
            started_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(roles.module.create_role_sql(role))
    op.execute(roles.module._database_grant("CONNECT", role))
    op.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    op.execute(f'GRANT SELECT ON analytics_events, learning_sessions TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT, DELETE ON {", ".join(REBUILDABLE_TABLES)} TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {PROGRESS_TABLE} TO "{role}"')


def downgrade() -> None:
    schema, role = _names()
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
    op.execute(f"DROP TABLE IF EXISTS {PROGRESS_TABLE}")
