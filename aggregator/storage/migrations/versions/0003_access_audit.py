"""Access audit log of the query API, and the index its "active learners" figure reads.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

``access_audit_log`` answers "who read whose data, through which endpoint, when" (HIPAA
§164.312(b) audit controls) with pseudonyms only: the actor and the subject are
``user.hash`` values, never raw ids. Rows are append-only: a trigger rejects UPDATE and
DELETE; retention is an operator's job (``ALTER TABLE ... DISABLE TRIGGER`` in a maintenance
window), never the API's.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS access_audit_log (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            occurred_at   timestamptz NOT NULL DEFAULT now(),
            actor_hash    text        NOT NULL,
            actor_role    text        NOT NULL CHECK (actor_role IN ('learner', 'staff')),
            endpoint      text        NOT NULL,
            subject_hash  text,
            scope         text        NOT NULL CHECK (scope IN ('user', 'cohort', 'system')),
            outcome       text        NOT NULL CHECK (outcome IN ('allowed', 'denied'))
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE access_audit_log IS 'Every read of user data through the query API: "
        "actor and subject as pseudonyms (user.hash), endpoint as route template; append-only.'"
    )
    # "Who read this learner's data?" and "what did this account read?"
    op.execute(
        "CREATE INDEX IF NOT EXISTS access_audit_subject ON access_audit_log (subject_hash, occurred_at)"
    )
    op.execute("CREATE INDEX IF NOT EXISTS access_audit_actor ON access_audit_log (actor_hash, occurred_at)")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION access_audit_log_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'access_audit_log is append-only';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER access_audit_log_append_only
        BEFORE UPDATE OR DELETE ON access_audit_log
        FOR EACH ROW EXECUTE FUNCTION access_audit_log_append_only()
        """
    )
    # "Active learners in a window" is the count of learners whose last activity falls in it
    # (gamification_stats.last_activity_at is the latest event time of each learner): an index
    # range count over at most one entry per learner, where counting distinct learners in
    # user_activity_hourly reads one entry per learner-hour (~200k for 24 h at 10k learners).
    op.execute(
        "CREATE INDEX IF NOT EXISTS gamification_stats_last_activity ON gamification_stats (last_activity_at)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS gamification_stats_last_activity")
    op.execute("DROP TABLE IF EXISTS access_audit_log")
    op.execute("DROP FUNCTION IF EXISTS access_audit_log_append_only()")
