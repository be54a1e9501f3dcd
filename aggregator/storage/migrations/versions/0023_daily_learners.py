"""Learners per UTC day, kept by the aggregator, so the staff cohort route reads 30 rows, not 300k.

Revision ID: 0023_daily_learners
Revises: 0022_erasure_finish
Create Date: 2026-12-04

The cohort route suppresses a day of fewer than k learners, and counted them per request with a
``count(*)`` over ``daily_activity_summary``: 162.6 ms p95 for 30 days at 10k learners (quiet
``bench --only api``), against a 25 ms target. ``daily_learners`` holds that count: the aggregator
changes it in the statement that merges the per-learner daily rows (``UPSERT_DAILY``, the learners
that became active on a day less those that stopped being so), exactly as ``active_users`` of
``hourly_analytics_summary`` is kept per hour. Filled here from the per-learner rows.

A cohort-level aggregate like ``hourly_analytics_summary``: an erasure leaves it as it is
(docs/privacy.md). A local table on the citus variant (keyed by day, not by learner).
Rights: the aggregator writes, the query API reads, a rollup rebuild replaces a day's row.
"""

import re

from alembic import context, op

revision = "0023_daily_learners"
down_revision = "0022_erasure_finish"
branch_labels = None
depends_on = None

STUDY_EPSILON_S = 5e-7
"""As ``aggregator.consumer.rollup_sql.STUDY_EPSILON_S`` when this revision was written."""
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def upgrade() -> None:
    attributes = context.config.attributes
    aggregator, api = attributes["aggregator_role"], attributes["api_role"]
    rebuilder = attributes.get("rebuild_role") or "studyin_rebuilder"
    if not _NAME.match(rebuilder):
        raise ValueError(f"not a plain lower-case SQL name: {rebuilder!r}")
    op.execute(
        """
        CREATE TABLE daily_learners (
            day       date    PRIMARY KEY,
            learners  integer NOT NULL DEFAULT 0
        )
        """
    )
    op.execute(
        f"""
        INSERT INTO daily_learners (day, learners)
        SELECT day, count(*) FROM daily_activity_summary
        WHERE events > 0 OR sessions > 0 OR study_seconds >= {STUDY_EPSILON_S}
        GROUP BY day
        """
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON daily_learners TO "{aggregator}"')
    op.execute(f'GRANT SELECT ON daily_learners TO "{api}"')
    op.execute(f'GRANT SELECT, INSERT, DELETE ON daily_learners TO "{rebuilder}"')


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS daily_learners")
