"""Saved funnels: named, versioned funnel definitions staff keep and re-read.

Revision ID: 0014_saved_funnels
Revises: 0013_experiments
Create Date: 2026-12-03

One row per (name, version); a new version is a new row, rows are never changed or deleted
(the API role may ``SELECT`` and ``INSERT``, nothing else), so an answer cached for a version
(``aggregator/analysis/saved.py``) can never belong to another definition. ``definition`` is
the funnel definition as the API validated it (JSON); ``created_by`` the staff pseudonym.
"""

from alembic import context, op

revision = "0014_saved_funnels"
down_revision = "0013_experiments"
branch_labels = None
depends_on = None

TABLE = "saved_funnels"


def upgrade() -> None:
    api = context.config.attributes["api_role"]
    op.execute(
        f"""
        CREATE TABLE {TABLE} (
            name        text        NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{{0,63}}$'),
            version     integer     NOT NULL CHECK (version >= 1),
            definition  jsonb       NOT NULL,
            created_by  text        NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, version)
        )
        """
    )
    op.execute(f'GRANT SELECT, INSERT ON {TABLE} TO "{api}"')


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {TABLE}")
