"""The query API may read learning events through one narrow view, for funnels and retention.

Revision ID: 0010_analysis
Revises: 0009_export
Create Date: 2026-12-03

The API's event-sequence store (``aggregator/analysis``) needs each learning event's learner,
time, type, a handful of filter properties and the commit-ordered watermark ``stored_xid``
(0008), nothing else: ``analysis_events`` is a ``security_barrier`` view over
``analytics_events`` with exactly those columns (no ``properties`` document, no API requests,
no rows without a learner), and the API role gets ``SELECT`` on the view only, never on the
table. The view runs with its owner's rights on the table (the migrating user), as views do.

``tie`` is the first 8 bytes of the event id as a signed bigint (the order of events of one
learner at the same microsecond); ``time_us`` the event time in microseconds since the epoch.
"""

from alembic import context, op

revision = "0010_analysis"
down_revision = "0009_export"
branch_labels = None
depends_on = None

VIEW = "analysis_events"


def upgrade() -> None:
    api = context.config.attributes["api_role"]
    op.execute(
        f"""
        CREATE VIEW {VIEW} WITH (security_barrier) AS
        SELECT (extract(epoch FROM occurred_at) * 1000000)::bigint AS time_us,
               ('x' || left(replace(event_id::text, '-', ''), 16))::bit(64)::bigint AS tie,
               event_type, user_hash,
               properties->>'material_type' AS material_type,
               properties->>'material_id' AS material_id,
               properties->>'achievement_id' AS achievement_id,
               properties->>'topic_category' AS topic_category,
               properties->>'xp_reason' AS xp_reason,
               coalesce(session_id::text, properties->>'session_id') AS session_id,
               properties->>'xp_amount' AS xp_amount,
               properties->>'duration_s' AS duration_s,
               stored_xid
        FROM analytics_events
        WHERE user_hash IS NOT NULL AND event_type NOT IN ('api_request', 'system_metric')
        """
    )
    op.execute(f'GRANT SELECT ON {VIEW} TO "{api}"')


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {VIEW}")
