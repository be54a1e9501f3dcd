"""What funnels and retention need of a learner beyond raw retention: first activity and key link.

Revision ID: 0020_funnels_finish
Revises: 0017_citus_variant
Create Date: 2026-12-04

``analysis_learners`` holds one row per pseudonym (``user_hash``), all time, kept by the aggregator
(``aggregator/consumer/learners.py``): ``first_activity_at``, the time of the pseudonym's first
learning event (API requests and system metrics never count), and ``previous_hash``, the pseudonym
the same learner had under the previous analytics key, when an event carried it
(``user.previous_hash``, sent only during a key rotation's transition; docs/analytics.md). Both
merges are idempotent (``least``, ``coalesce``), so redelivery, reordering and crashes cannot make
them wrong. Raw retention drops old events; this table keeps each learner's first activity, so a
retention cohort older than raw retention still starts where the learner did.

The aggregator may read, insert and update it; the API role reads it (the event-sequence store,
``aggregator/analysis/loader.py``). Existing learners are back-filled from the raw events still held.
"""

from alembic import context, op

revision = "0020_funnels_finish"
down_revision = "0017_citus_variant"
branch_labels = None
depends_on = None

TABLE = "analysis_learners"


def upgrade() -> None:
    attributes = context.config.attributes
    aggregator, api = attributes["aggregator_role"], attributes["api_role"]
    op.execute(
        f"""
        CREATE TABLE {TABLE} (
            user_hash          text        PRIMARY KEY,
            first_activity_at  timestamptz NOT NULL,
            previous_hash      text
        )
        """
    )
    op.execute(
        f"""
        INSERT INTO {TABLE} (user_hash, first_activity_at)
        SELECT user_hash, min(occurred_at) FROM analytics_events
        WHERE user_hash IS NOT NULL AND event_type NOT IN ('api_request', 'system_metric')
        GROUP BY user_hash
        """
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON {TABLE} TO "{aggregator}"')
    op.execute(f'GRANT SELECT ON {TABLE} TO "{api}"')


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {TABLE}")
