"""Custom events: the schema registry (full history) and the per-type daily rollup.

Revision ID: 0012_custom_events
Revises: 0011_route_hours
Create Date: 2026-12-03

Custom events themselves are stored in ``analytics_events`` (``event_type`` is the schema's vendor-
qualified name, ``properties`` the event's properties plus ``$version``): the same day partitions,
retention, exactly-once inserts, commit-order watermark, ``analysis_events`` view and warehouse export
as every other event, with no second raw table to keep in step (docs/custom-events.md).

Rights: the aggregator reads the registry and maintains the rollup; the API (staff endpoint) reads
both, registers versions and may set ``deprecated_at`` only (a registered schema never changes).
"""

from alembic import context, op

revision = "0012_custom_events"
down_revision = "0011_route_hours"
branch_labels = None
depends_on = None


def upgrade() -> None:
    attributes = context.config.attributes
    aggregator, api = attributes["aggregator_role"], attributes["api_role"]
    op.execute(
        """
        CREATE TABLE custom_event_schemas (
            name          text        NOT NULL,
            version       text        NOT NULL,
            model         integer     NOT NULL,
            revision      integer     NOT NULL,
            addition      integer     NOT NULL,
            level         text        NOT NULL CHECK (level IN ('MODEL', 'REVISION', 'ADDITION')),
            schema        jsonb       NOT NULL,
            registered_at timestamptz NOT NULL DEFAULT now(),
            registered_by text        NOT NULL,
            deprecated_at timestamptz,
            PRIMARY KEY (name, version),
            UNIQUE (name, model, revision, addition)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE custom_event_daily (
            day        date   NOT NULL,
            event_type text   NOT NULL,
            events     bigint NOT NULL,
            PRIMARY KEY (day, event_type)
        )
        """
    )
    op.execute(f'GRANT SELECT ON custom_event_schemas TO "{aggregator}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON custom_event_daily TO "{aggregator}"')
    op.execute(f'GRANT SELECT, INSERT ON custom_event_schemas TO "{api}"')
    op.execute(f'GRANT UPDATE (deprecated_at) ON custom_event_schemas TO "{api}"')
    op.execute(f'GRANT SELECT ON custom_event_daily TO "{api}"')


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS custom_event_daily")
    op.execute("DROP TABLE IF EXISTS custom_event_schemas")
