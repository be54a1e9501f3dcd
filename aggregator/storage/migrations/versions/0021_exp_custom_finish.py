"""Experiments: exact sums per variant, metric and day; custom event counts as experiment metrics.

Revision ID: 0021_exp_custom_finish
Revises: 0020_funnels_finish
Create Date: 2026-12-04

``experiment_variant_day_sums`` holds, per variant, metric and UTC day (of event time), the change of
the sums of ``experiment_variant_sums`` on that day: their running total up to a day is the sums as
they stood at its end, which the sequential method reads day by day
(``aggregator/consumer/experiments.py``). Learners stored before this revision enter it at their next
change (their totals so far on their exposure day).

The partial index lets an exposure recount a learner's custom events (metrics ``custom:T``): custom
event types hold a ``/``, built-in ones never do.

Rights as for ``experiment_variant_sums``: the aggregator writes, the query API reads.
"""

from alembic import context, op

revision = "0021_exp_custom_finish"
down_revision = "0020_funnels_finish"
branch_labels = None
depends_on = None


def upgrade() -> None:
    attributes = context.config.attributes
    aggregator, api = attributes["aggregator_role"], attributes["api_role"]
    op.execute(
        """
        CREATE TABLE experiment_variant_day_sums (
            experiment_key        text    NOT NULL,
            version               integer NOT NULL,
            variant               text    NOT NULL,
            metric                text    NOT NULL,
            day                   date    NOT NULL,
            n                     bigint  NOT NULL DEFAULT 0,
            successes             bigint  NOT NULL DEFAULT 0,
            sum                   numeric NOT NULL DEFAULT 0,
            sum_squares           numeric NOT NULL DEFAULT 0,
            covariate_sum         numeric NOT NULL DEFAULT 0,
            covariate_sum_squares numeric NOT NULL DEFAULT 0,
            cross_sum             numeric NOT NULL DEFAULT 0,
            PRIMARY KEY (experiment_key, version, variant, metric, day)
        )
        """
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS analytics_events_custom_inputs ON analytics_events "
        "(user_hash, occurred_at) WHERE user_hash IS NOT NULL AND event_type LIKE '%/%'"
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON experiment_variant_day_sums TO "{aggregator}"')
    op.execute(f'GRANT SELECT ON experiment_variant_day_sums TO "{api}"')


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS analytics_events_custom_inputs")
    op.execute("DROP TABLE IF EXISTS experiment_variant_day_sums")
