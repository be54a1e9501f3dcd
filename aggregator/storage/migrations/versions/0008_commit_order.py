"""Raw events carry the id of the transaction that stored them: a commit-ordered watermark.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Rounds commit out of order, so ``received_at`` cannot tell a reader which rows are new since
it last looked: a round that began earlier may commit later. ``stored_xid`` is the storing
transaction's id (``pg_current_xact_id()``, set by the column default, so the aggregator's
``COPY`` needs no change; stored as ``bigint`` because ``xid8`` has no BRIN operator class, and
an epoch-extended id never wraps). A reader that remembers ``pg_snapshot_xmin`` of its previous
snapshot and reads ``stored_xid >= previous xmin AND stored_xid < pg_snapshot_xmin(current
snapshot)`` (both cast ``::text::bigint``) sees every row exactly once, whatever order rounds
committed in: every transaction below a snapshot's xmin has ended, and none at or above the
previous one was visible before.

Adding the column is metadata only (the default is a STABLE function, evaluated once for the
rows already stored, which get this migration's transaction id: older than any later round).
A BRIN index serves the range reads: ids grow with insertion order within each day partition.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE analytics_events "
        "ADD COLUMN stored_xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS analytics_events_stored_xid ON analytics_events USING brin (stored_xid)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS analytics_events_stored_xid")
    op.execute("ALTER TABLE analytics_events DROP COLUMN stored_xid")
