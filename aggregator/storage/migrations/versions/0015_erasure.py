"""Erasure of a learner: the audit log may forget a learner's pseudonym, and keeps erasure receipts.

Revision ID: 0015_erasure
Revises: 0014_saved_funnels
Create Date: 2026-12-03

``access_audit_log`` stays append-only with one exception: ``learner erase`` replaces an erased
learner's pseudonym, where it is the actor or the subject of a row, by ``erased:<digest>`` (the
tombstone's digest, docs/privacy.md). The trigger allows exactly that change and nothing else:
no row is deleted, and no other column (time, endpoint, role, scope, outcome) may move.
``detail`` holds an erasure receipt's counts per sink (what was deleted, where; no raw id, no
pseudonym). The erasure runs as the migrating (admin) user; no service role gets a new right.
"""

from alembic import op

revision = "0015_erasure"
down_revision = "0014_saved_funnels"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE access_audit_log ADD COLUMN IF NOT EXISTS detail jsonb")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION access_audit_log_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE'
               AND NEW.id = OLD.id AND NEW.occurred_at = OLD.occurred_at
               AND NEW.actor_role = OLD.actor_role AND NEW.endpoint = OLD.endpoint
               AND NEW.scope = OLD.scope AND NEW.outcome = OLD.outcome
               AND NEW.detail IS NOT DISTINCT FROM OLD.detail
               AND (NEW.actor_hash = OLD.actor_hash OR NEW.actor_hash LIKE 'erased:%')
               AND (NEW.subject_hash IS NOT DISTINCT FROM OLD.subject_hash
                    OR NEW.subject_hash LIKE 'erased:%') THEN
                RETURN NEW;  -- an erased learner's pseudonym replaced by its tombstone digest
            END IF;
            RAISE EXCEPTION 'access_audit_log is append-only';
        END
        $$
        """
    )


def downgrade() -> None:
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
    op.execute("ALTER TABLE access_audit_log DROP COLUMN IF EXISTS detail")
