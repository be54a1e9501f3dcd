"""Initial analytics schema: raw events (partitioned by day) and the learning rollups.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Raw events, one partition per UTC day (created ahead by the aggregator; retention drops
    # whole partitions). The primary key must contain the partition key; a redelivered event
    # has the same id and the same time, so it lands on the same partition and conflicts.
    op.execute(
        """
        CREATE TABLE analytics_events (
            event_id     uuid        NOT NULL,
            occurred_at  timestamptz NOT NULL,
            event_type   text        NOT NULL,
            user_hash    text,
            session_id   uuid,
            properties   jsonb       NOT NULL DEFAULT '{}'::jsonb,
            received_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (event_id, occurred_at)
        ) PARTITION BY RANGE (occurred_at)
        """
    )
    op.execute(
        """
        CREATE TABLE learning_sessions (
            session_id         uuid PRIMARY KEY,
            user_hash          text        NOT NULL,
            started_at         timestamptz,
            ended_at           timestamptz,
            duration_s         double precision,
            xp_earned          integer     NOT NULL DEFAULT 0,
            materials_touched  text[]      NOT NULL DEFAULT '{}',
            end_reason         text
        )
        """
    )
    # The overview lists one user's sessions over a time window.
    op.execute("CREATE INDEX learning_sessions_user_started ON learning_sessions (user_hash, started_at)")
    op.execute(
        """
        CREATE TABLE daily_activity_summary (
            user_hash            text    NOT NULL,
            day                  date    NOT NULL,
            sessions             integer NOT NULL DEFAULT 0,
            study_seconds        double precision NOT NULL DEFAULT 0,
            materials_viewed     integer NOT NULL DEFAULT 0,
            materials_completed  integer NOT NULL DEFAULT 0,
            xp                   bigint  NOT NULL DEFAULT 0,
            events               integer NOT NULL DEFAULT 0,
            PRIMARY KEY (user_hash, day)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS daily_activity_summary")
    op.execute("DROP TABLE IF EXISTS learning_sessions")
    op.execute("DROP TABLE IF EXISTS analytics_events")
