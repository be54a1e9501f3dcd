"""Least privilege: group roles for the aggregator (write) and the query API (read + audit insert).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Two NOLOGIN roles, named by the settings ``postgres_aggregator_role`` and ``postgres_api_role``;
the services ``SET ROLE`` to them when they connect (``aggregator/storage/db.py``), so a login user only
needs to be a member (``CREATE ROLE aggregator_login LOGIN PASSWORD '...' IN ROLE
studyin_aggregator``). What each role may do, table by table:

================================  ==========================  ===========================
object                            aggregator                  api
================================  ==========================  ===========================
schema                            USAGE                       USAGE
``analytics_events`` (raw)        SELECT, INSERT              --
rollup tables                     SELECT, INSERT, UPDATE      SELECT
``access_audit_log``              --                          SELECT, INSERT
partition functions (definer)     EXECUTE                     --
``count_map_*``, ``hist_*``       EXECUTE                     EXECUTE
database                          CONNECT, TEMPORARY          CONNECT
================================  ==========================  ===========================

No role gets DELETE, TRUNCATE, REFERENCES, TRIGGER or DDL. The raw insert needs SELECT only
for its ``RETURNING``; ``ON CONFLICT DO NOTHING`` needs no UPDATE. The audit log's identity
column needs no sequence grant (PostgreSQL does not check sequence rights for identity
columns; a test proves the API role's insert). The aggregator's staging tables are temporary
(TEMPORARY is PUBLIC's by default; granted explicitly so a hardened database keeps working).

Daily partitions need ownership of ``analytics_events`` to be created or dropped, which the
aggregator must not have: two SECURITY DEFINER functions, owned by the migration's user, do
exactly that for one validated ``date`` each, with a pinned ``search_path`` and every name
schema-qualified; only the aggregator role may execute them.

Roles are cluster-global while this revision runs once per schema (and per database):
creation tolerates roles that exist already or that a concurrent migration (another database,
which the advisory lock of ``env.py`` does not cover) creates at the same moment. Downgrade
drops the functions and this schema's grants but keeps the roles: other schemas or databases
of the cluster may grant to them (``DROP ROLE`` would fail on those dependencies), and login
users are members of them.
"""

import re

from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RAW_TABLE = "analytics_events"
AUDIT_TABLE = "access_audit_log"
ROLLUP_TABLES = (
    "learning_sessions",
    "daily_activity_summary",
    "gamification_stats",
    "user_activity_hourly",
    "ai_coach_metrics",
    "system_metrics",
    "hourly_analytics_summary",
)
AGGREGATOR_FUNCTIONS = ("count_map_add(jsonb, jsonb)",)
API_FUNCTIONS = (
    "count_map_add(jsonb, jsonb)",
    "count_map_sum(jsonb)",
    "hist_quantile(jsonb, double precision)",
)
PARTITION_FUNCTIONS = ("create_events_partition(date)", "drop_events_partition(date)")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _names() -> tuple[str, str, str]:
    """Schema, aggregator role and API role, as ``schema.alembic_config`` passes them."""
    attributes = context.config.attributes
    schema, aggregator, api = attributes["schema"], attributes["aggregator_role"], attributes["api_role"]
    # The names are spliced into DDL: the settings' pattern, checked again where it matters.
    for name in (schema, aggregator, api):
        if not _NAME.match(name):
            raise ValueError(f"not a plain lower-case SQL name: {name!r}")
    if aggregator == api:
        raise ValueError("postgres_aggregator_role and postgres_api_role must differ")
    return schema, aggregator, api


def create_role_sql(role: str) -> str:
    """Create NOLOGIN ``role`` unless it exists (safe concurrently), and let the migrating user
    assume it, so services that connect with ``postgres_url`` itself can still ``SET ROLE``."""
    return f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN
            BEGIN
                CREATE ROLE "{role}" NOLOGIN;
            EXCEPTION
                -- a migration of another schema or database created it meanwhile
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role "{role}" does not exist and % may not create it', current_user
                        USING HINT = 'create it (CREATE ROLE "{role}" NOLOGIN) or run the migration '
                                     'as a user with CREATEROLE';
            END;
        END IF;
        IF EXISTS (SELECT FROM pg_catalog.pg_roles
                   WHERE rolname = '{role}' AND (rolsuper OR rolbypassrls)) THEN
            RAISE EXCEPTION 'role "{role}" is a superuser or bypasses RLS: not a least-privilege role';
        END IF;
        IF NOT pg_catalog.pg_has_role(current_user, '{role}', 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', '{role}', current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING '% cannot assume role "{role}": services connecting as % will fail',
                    current_user, current_user;
            END;
        END IF;
    END
    $$
    """


def _database_grant(privileges: str, role: str) -> str:
    """Database-level rights (granted only where the migrating user may: owner or superuser)."""
    checks = " AND ".join(
        f"has_database_privilege(current_user, current_database(), '{p.strip()} WITH GRANT OPTION')"
        for p in privileges.split(",")
    )
    return f"""
    DO $$
    BEGIN
        IF {checks} THEN
            EXECUTE format('GRANT {privileges} ON DATABASE %I TO %I', current_database(), '{role}');
        ELSE
            RAISE WARNING '% cannot grant {privileges} on database % to "{role}" (PUBLIC has them '
                'by default)', current_user, current_database();
        END IF;
    END
    $$
    """


def _partition_functions(schema: str) -> list[str]:
    # Bounds in UTC whatever the caller's TimeZone; names derive from the date only, so no
    # caller-supplied text reaches the DDL. Dropping refuses the last two UTC days (raw
    # retention is at least one whole day) and anything that is not a partition of the table.
    settings = "SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC'"
    create = f"""
    CREATE OR REPLACE FUNCTION "{schema}".create_events_partition(day date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER {settings} AS $fn$
    DECLARE
        part text;
        existed boolean;
    BEGIN
        IF day IS NULL OR NOT (day BETWEEN DATE '1970-01-01' AND DATE '9999-12-30') THEN
            RAISE EXCEPTION 'create_events_partition: day % out of range', day
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        part := '{RAW_TABLE}_p' || to_char(day, 'YYYYMMDD');
        existed := to_regclass(format('%I.%I', '{schema}', part)) IS NOT NULL;
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.{RAW_TABLE} '
                       'FOR VALUES FROM (%L) TO (%L)', '{schema}', part, '{schema}',
                       day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
        RETURN NOT existed;
    END
    $fn$
    """
    drop = f"""
    CREATE OR REPLACE FUNCTION "{schema}".drop_events_partition(day date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER {settings} AS $fn$
    DECLARE
        part text;
        rel regclass;
    BEGIN
        IF day IS NULL OR NOT (day BETWEEN DATE '1970-01-01' AND (now() AT TIME ZONE 'UTC')::date - 2) THEN
            RAISE EXCEPTION 'drop_events_partition: day % is not past retention', day
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        part := '{RAW_TABLE}_p' || to_char(day, 'YYYYMMDD');
        rel := to_regclass(format('%I.%I', '{schema}', part));
        IF rel IS NULL THEN
            RETURN false;
        END IF;
        IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = rel
                       AND inhparent = format('%I.{RAW_TABLE}', '{schema}')::regclass) THEN
            RAISE EXCEPTION 'drop_events_partition: % is not a partition of {RAW_TABLE}', part
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        EXECUTE format('DROP TABLE %I.%I', '{schema}', part);
        RETURN true;
    END
    $fn$
    """
    return [create, drop]


def upgrade() -> None:
    schema, aggregator, api = _names()
    for role in (aggregator, api):
        op.execute(create_role_sql(role))
    op.execute(_database_grant("CONNECT, TEMPORARY", aggregator))
    op.execute(_database_grant("CONNECT", api))

    op.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{aggregator}", "{api}"')
    op.execute(f'GRANT SELECT, INSERT ON {RAW_TABLE} TO "{aggregator}"')
    rollups = ", ".join(ROLLUP_TABLES)
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON {rollups} TO "{aggregator}"')
    op.execute(f'GRANT SELECT ON {rollups} TO "{api}"')
    op.execute(f'GRANT SELECT, INSERT ON {AUDIT_TABLE} TO "{api}"')
    # Pure functions of their arguments; PUBLIC may execute them by default, but only roles
    # with USAGE on this schema can name them. Granted explicitly so a REVOKE FROM PUBLIC
    # by an operator does not break the services.
    for function in AGGREGATOR_FUNCTIONS:
        op.execute(f'GRANT EXECUTE ON FUNCTION {function} TO "{aggregator}"')
    for function in API_FUNCTIONS:  # FUNCTION covers aggregates too
        op.execute(f'GRANT EXECUTE ON FUNCTION {function} TO "{api}"')

    for statement in _partition_functions(schema):
        op.execute(statement)
    for function in PARTITION_FUNCTIONS:
        # Functions are executable by PUBLIC unless revoked: these run as the table owner.
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f'GRANT EXECUTE ON FUNCTION {function} TO "{aggregator}"')


def downgrade() -> None:
    schema, aggregator, api = _names()
    for function in PARTITION_FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    # The roles may already be gone (dropped by an operator): revoke only from those that exist.
    op.execute(
        f"""
        DO $$
        DECLARE
            role text;
        BEGIN
            FOREACH role IN ARRAY ARRAY['{aggregator}', '{api}'] LOOP
                IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role) THEN
                    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', '{schema}', role);
                    EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', '{schema}', role);
                    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', '{schema}', role);
                END IF;
            END LOOP;
        END
        $$
        """
    )
