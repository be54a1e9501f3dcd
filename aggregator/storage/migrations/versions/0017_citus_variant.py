"""The schema variant (plain or citus), recorded; the citus variant's keys and learner-less table.

Revision ID: 0017_citus_variant
Revises: 0016_rebuild
Create Date: 2026-12-03

``STUDYIN_ANALYTICS_POSTGRES_SCHEMA_VARIANT`` (``aggregator/storage/variant.py``) is read here,
once: the variant is recorded in the one-row table ``schema_variant`` and the aggregator refuses
to start when its setting names another one. ``plain`` changes nothing else. ``citus`` makes every
per-learner table distributable by ``user_hash`` (docs/scaling-postgres.md):

* ``analytics_events`` keeps only events with a learner, ``user_hash NOT NULL``, primary key
  ``(user_hash, event_id, occurred_at)`` (Citus enforces uniqueness per shard, so the key must
  hold the distribution column);
* events without a learner (API requests) move to ``analytics_system_events``, the same columns,
  key and daily partitions, which stays a local table of the coordinator;
* the two SECURITY DEFINER partition functions of 0004 create and drop a day's partition of both.

The raw-table rights follow 0004 and 0009_export: the aggregator may SELECT and INSERT the new
table, the exporter SELECT it; every service role may read ``schema_variant``. The API role reads
neither raw table (only the ``analysis_events`` view, which reads learners' events only, so it
is the same on both variants).
"""

import re

from alembic import context, op

revision = "0017_citus_variant"
down_revision = "0016_rebuild"
branch_labels = None
depends_on = None

RAW = "analytics_events"
LOCAL = "analytics_system_events"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SETTINGS = "SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC'"


def _names() -> tuple[str, str, str, str, str]:
    """Schema, variant, aggregator, API and exporter roles (as ``schema.alembic_config`` passes them)."""
    attributes = context.config.attributes
    names = (
        attributes["schema"],
        attributes.get("schema_variant", "plain"),
        attributes["aggregator_role"],
        attributes["api_role"],
        attributes["exporter_role"],
    )
    for name in names:  # spliced into DDL
        if not _NAME.match(name):
            raise ValueError(f"not a plain lower-case SQL name: {name!r}")
    if names[1] not in ("plain", "citus"):
        raise ValueError(f"unknown schema variant {names[1]!r} (plain or citus)")
    return names


def _partition_functions(schema: str) -> list[str]:
    """0004's two functions, for a day's partition of both raw tables (same checks)."""
    create = f"""
    CREATE OR REPLACE FUNCTION "{schema}".create_events_partition(day date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER {_SETTINGS} AS $fn$
    DECLARE
        parent text;
        part text;
        existed boolean;
    BEGIN
        IF day IS NULL OR NOT (day BETWEEN DATE '1970-01-01' AND DATE '9999-12-30') THEN
            RAISE EXCEPTION 'create_events_partition: day % out of range', day
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        existed := to_regclass(format('%I.%I', '{schema}', '{RAW}_p' || to_char(day, 'YYYYMMDD')))
                   IS NOT NULL;
        FOREACH parent IN ARRAY ARRAY['{RAW}', '{LOCAL}'] LOOP
            part := parent || '_p' || to_char(day, 'YYYYMMDD');
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.%I '
                           'FOR VALUES FROM (%L) TO (%L)', '{schema}', part, '{schema}', parent,
                           day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
        END LOOP;
        RETURN NOT existed;
    END
    $fn$
    """
    drop = f"""
    CREATE OR REPLACE FUNCTION "{schema}".drop_events_partition(day date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER {_SETTINGS} AS $fn$
    DECLARE
        parent text;
        part text;
        rel regclass;
        dropped boolean := false;
    BEGIN
        IF day IS NULL OR NOT (day BETWEEN DATE '1970-01-01' AND (now() AT TIME ZONE 'UTC')::date - 2) THEN
            RAISE EXCEPTION 'drop_events_partition: day % is not past retention', day
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOREACH parent IN ARRAY ARRAY['{RAW}', '{LOCAL}'] LOOP
            part := parent || '_p' || to_char(day, 'YYYYMMDD');
            rel := to_regclass(format('%I.%I', '{schema}', part));
            CONTINUE WHEN rel IS NULL;
            IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = rel
                           AND inhparent = format('%I.%I', '{schema}', parent)::regclass) THEN
                RAISE EXCEPTION 'drop_events_partition: % is not a partition of %', part, parent
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            EXECUTE format('DROP TABLE %I.%I', '{schema}', part);
            dropped := true;
        END LOOP;
        RETURN dropped;
    END
    $fn$
    """
    return [create, drop]


def _citus_upgrade(schema: str, aggregator: str, exporter: str) -> None:
    op.execute(
        f"CREATE TABLE {LOCAL} (LIKE {RAW} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES) "
        "PARTITION BY RANGE (occurred_at)"
    )
    op.execute(f"ALTER TABLE {LOCAL} ADD CONSTRAINT {LOCAL}_no_learner CHECK (user_hash IS NULL)")
    for statement in _partition_functions(schema):
        op.execute(statement)
    # A partition of the new table for every day the raw table has one, then the rows move.
    op.execute(
        f"""
        SELECT "{schema}".create_events_partition(to_date(right(c.relname, 8), 'YYYYMMDD'))
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = '{RAW}'::regclass AND c.relname ~ '^{RAW}_p[0-9]{{8}}$'
        """
    )
    op.execute(f"INSERT INTO {LOCAL} SELECT * FROM {RAW} WHERE user_hash IS NULL")
    op.execute(f"DELETE FROM {RAW} WHERE user_hash IS NULL")
    op.execute(f"ALTER TABLE {RAW} ALTER COLUMN user_hash SET NOT NULL")
    op.execute(f"ALTER TABLE {RAW} DROP CONSTRAINT {RAW}_pkey")
    op.execute(f"ALTER TABLE {RAW} ADD PRIMARY KEY (user_hash, event_id, occurred_at)")
    op.execute(f'GRANT SELECT, INSERT ON {LOCAL} TO "{aggregator}"')
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{exporter}') THEN
                GRANT SELECT ON {LOCAL} TO "{exporter}";
            END IF;
        END
        $$
        """
    )


def upgrade() -> None:
    schema, variant, aggregator, api, exporter = _names()
    op.execute(
        """
        CREATE TABLE schema_variant (
            one      boolean PRIMARY KEY DEFAULT true CHECK (one),
            variant  text NOT NULL CHECK (variant IN ('plain', 'citus'))
        )
        """
    )
    op.execute(f"INSERT INTO schema_variant (variant) VALUES ('{variant}')")
    op.execute(f'GRANT SELECT ON schema_variant TO "{aggregator}", "{api}"')
    if variant == "citus":
        _citus_upgrade(schema, aggregator, exporter)


def downgrade() -> None:
    from alembic.script import ScriptDirectory

    schema = context.config.attributes["schema"]
    op.execute(
        f"""
        DO $$
        BEGIN
            IF to_regclass('{LOCAL}') IS NOT NULL THEN
                ALTER TABLE {RAW} DROP CONSTRAINT {RAW}_pkey;
                ALTER TABLE {RAW} ADD PRIMARY KEY (event_id, occurred_at);
                ALTER TABLE {RAW} ALTER COLUMN user_hash DROP NOT NULL;
                INSERT INTO {RAW} SELECT * FROM {LOCAL};
                DROP TABLE {LOCAL};
            END IF;
        END
        $$
        """
    )
    roles = ScriptDirectory.from_config(context.config).get_revision("0004")
    assert roles is not None
    for statement in roles.module._partition_functions(schema):
        op.execute(statement)
    op.execute("DROP TABLE IF EXISTS schema_variant")
