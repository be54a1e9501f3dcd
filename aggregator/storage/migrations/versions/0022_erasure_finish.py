"""Erasure: a role with exactly the rights ``learner export|erase`` need, so neither the command nor
the API's staff endpoints run as the schema's owner.

Revision ID: 0022_erasure_finish
Revises: 0021_exp_custom_finish
Create Date: 2026-12-04

The erasure role (``STUDYIN_ANALYTICS_POSTGRES_ERASURE_ROLE``, default ``studyin_eraser``;
``aggregator/learners/``, docs/privacy.md):

==========================================  ==============================================
object                                      erasure role
==========================================  ==============================================
schema                                      USAGE
per-learner tables (the registry)           SELECT, DELETE (read for the export, deleted)
``access_audit_log``                        SELECT, INSERT, UPDATE (actor_hash, subject_hash)
Iceberg catalog schema and its tables       USAGE; SELECT, UPDATE (the erasure's commits)
database                                    CONNECT
==========================================  ==============================================

The audit log's trigger (0015_erasure) still allows only the replacement of a pseudonym by
``erased:<digest>``; the column grant keeps every other column out of reach even before it. No
INSERT or UPDATE on analytics tables, no TRUNCATE, no DDL. The catalog's tables are created by the
exporter role on its first export, so they get their grants by default privileges of that role
(and now, where they exist). The warehouse lock is an advisory lock: no grant.
"""

import re

from alembic import context, op

revision = "0022_erasure_finish"
down_revision = "0021_exp_custom_finish"
branch_labels = None
depends_on = None

LEARNER_TABLES = (
    "analytics_events",
    "learning_sessions",
    "daily_activity_summary",
    "gamification_stats",
    "user_activity_hourly",
    "ai_coach_metrics",
    "experiment_learners",
    "analysis_learners",
)
"""``aggregator.learners.registry.LEARNER_TABLES`` when this revision was written (a test keeps them
in step; a later per-learner table grants the erasure role in its own revision)."""
AUDIT_TABLE = "access_audit_log"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _names() -> tuple[str, str, str, str]:
    attributes = context.config.attributes
    schema = attributes["schema"]
    role = attributes.get("erasure_role") or "studyin_eraser"
    exporter = attributes.get("exporter_role") or "studyin_exporter"
    catalog = attributes.get("export_catalog_schema") or f"{schema}_iceberg"[:63]
    for name in (schema, role, exporter, catalog):
        if not _NAME.match(name):
            raise ValueError(f"not a plain lower-case SQL name: {name!r}")
    return schema, role, exporter, catalog


def upgrade() -> None:
    from alembic.script import ScriptDirectory

    roles = ScriptDirectory.from_config(context.config).get_revision("0004")
    assert roles is not None
    schema, role, exporter, catalog = _names()
    op.execute(roles.module.create_role_sql(role))
    op.execute(roles.module._database_grant("CONNECT", role))
    op.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    op.execute(f'GRANT SELECT, DELETE ON {", ".join(LEARNER_TABLES)} TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT ON {AUDIT_TABLE} TO "{role}"')
    op.execute(f'GRANT UPDATE (actor_hash, subject_hash) ON {AUDIT_TABLE} TO "{role}"')
    op.execute(f'CREATE SCHEMA IF NOT EXISTS "{catalog}"')
    op.execute(f'GRANT USAGE ON SCHEMA "{catalog}" TO "{role}"')
    op.execute(f'GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA "{catalog}" TO "{role}"')
    op.execute(
        f'ALTER DEFAULT PRIVILEGES FOR ROLE "{exporter}" IN SCHEMA "{catalog}" '
        f'GRANT SELECT, UPDATE ON TABLES TO "{role}"'
    )


def downgrade() -> None:
    schema, role, exporter, catalog = _names()
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', '{schema}', '{role}');
                EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', '{schema}', '{role}');
                EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I '
                               'REVOKE SELECT, UPDATE ON TABLES FROM %I',
                               '{exporter}', '{catalog}', '{role}');
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', '{catalog}', '{role}');
                EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', '{catalog}', '{role}');
            END IF;
        END
        $$
        """
    )
