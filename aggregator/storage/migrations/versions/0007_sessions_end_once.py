"""Sessions start once and end once, per learner; their counted study time is kept.

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-02

A session counts at its earliest ``session_start`` and is ended by its earliest ``session_end``
(both ordered by ``(time, event id)``); a repeated start or end changes nothing, whichever
order they arrive in. Its study time is bounded by its span as recorded (end minus start) and
is counted only once both are known. The rollups move by differences: when a session's
earliest start or end changes (an earlier one arrives late), what the session had counted is
taken back and the new state counted, so the row must say what was counted:

* ``start_event_id`` / ``end_event_id``: the winning events (ties on time break on the id);
* ``study_s``: the study time the rollups hold for this session, spread over
  ``[ended_at - study_s, ended_at]`` (``duration_s`` stays the reported duration).

The key becomes ``(user_hash, session_id)``: a learner cannot end (or start) another learner's
session by reusing its id, and the table gets the distribution column in its key
(docs/scaling-postgres.md). Rows written before this revision counted their end's full
duration: ``study_s`` is set to that, so a later correction takes back what was counted.
"""

from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE learning_sessions
            DROP CONSTRAINT learning_sessions_pkey,
            ADD PRIMARY KEY (user_hash, session_id),
            ADD COLUMN start_event_id uuid,
            ADD COLUMN end_event_id uuid,
            ADD COLUMN study_s double precision NOT NULL DEFAULT 0
        """
    )
    op.execute(
        "UPDATE learning_sessions SET study_s = greatest(duration_s, 0) "
        "WHERE ended_at IS NOT NULL AND duration_s > 0"
    )


def downgrade() -> None:
    # Sessions of one id under several learners cannot share the old key: keep the earliest.
    op.execute(
        """
        DELETE FROM learning_sessions AS s USING learning_sessions AS o
        WHERE s.session_id = o.session_id AND s.user_hash > o.user_hash
        """
    )
    op.execute(
        """
        ALTER TABLE learning_sessions
            DROP CONSTRAINT learning_sessions_pkey,
            ADD PRIMARY KEY (session_id),
            DROP COLUMN start_event_id,
            DROP COLUMN end_event_id,
            DROP COLUMN study_s
        """
    )
