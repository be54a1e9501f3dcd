"""Experiments: definitions with history, per-learner state and exact per-variant sums.

Revision ID: 0013_experiments
Revises: 0012_custom_events
Create Date: 2026-12-03

``experiment_versions`` holds every version of every experiment (the history: a version is never
changed but for being stopped; new weights are a new version). ``experiment_learners`` is the
aggregator's per-learner state of an experiment version: the first exposure (time, event id, variant)
and, per catalogue metric, the learner's total since exposure and pre-exposure covariate.
``experiment_variant_sums`` holds, per variant and metric, the sums statistics need, maintained from
the changes of the per-learner state in the same transaction (``aggregator/consumer/experiments.py``).
The partial index lets an exposure read its learner's own earlier events (an exposure arriving after
the events that follow it, or arriving out of order).

Rights: the aggregator reads the definitions and writes the state and sums; the query API reads the
definitions and the sums, and creates and stops versions (the staff endpoint); nobody but the
aggregator reads the per-learner rows.
"""

from alembic import context, op

revision = "0013_experiments"
down_revision = "0012_custom_events"
branch_labels = None
depends_on = None

METRIC_EVENT_TYPES = (
    "experiment_exposure",
    "session_start",
    "session_end",
    "material_complete",
    "xp_awarded",
    "ai_coach_feedback",
)


def upgrade() -> None:
    attributes = context.config.attributes
    aggregator, api = attributes["aggregator_role"], attributes["api_role"]
    op.execute(
        """
        CREATE TABLE experiment_versions (
            experiment_key    text        NOT NULL,
            version           integer     NOT NULL CHECK (version >= 1),
            definition        json        NOT NULL,  -- json: keeps the variants' order (control first)
            status            text        NOT NULL CHECK (status IN ('running', 'stopped')),
            created_at        timestamptz NOT NULL DEFAULT now(),
            created_by        text        NOT NULL,
            stopped_at        timestamptz,
            PRIMARY KEY (experiment_key, version)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE experiment_learners (
            experiment_key  text        NOT NULL,
            version         integer     NOT NULL,
            user_hash       text        NOT NULL,
            variant         text        NOT NULL,
            exposed_at      timestamptz NOT NULL,
            exposure_id     uuid        NOT NULL,
            totals          jsonb       NOT NULL,
            PRIMARY KEY (user_hash, experiment_key, version)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE experiment_variant_sums (
            experiment_key        text    NOT NULL,
            version               integer NOT NULL,
            variant               text    NOT NULL,
            metric                text    NOT NULL,
            n                     bigint  NOT NULL DEFAULT 0,
            successes             bigint  NOT NULL DEFAULT 0,
            sum                   numeric NOT NULL DEFAULT 0,
            sum_squares           numeric NOT NULL DEFAULT 0,
            covariate_sum         numeric NOT NULL DEFAULT 0,
            covariate_sum_squares numeric NOT NULL DEFAULT 0,
            cross_sum             numeric NOT NULL DEFAULT 0,
            PRIMARY KEY (experiment_key, version, variant, metric)
        )
        """
    )
    types = ", ".join(f"'{t}'" for t in METRIC_EVENT_TYPES)
    op.execute(
        "CREATE INDEX IF NOT EXISTS analytics_events_experiment_inputs ON analytics_events "
        f"(user_hash, occurred_at) WHERE user_hash IS NOT NULL AND event_type IN ({types})"
    )
    op.execute(f'GRANT SELECT ON experiment_versions TO "{aggregator}"')
    op.execute(
        f'GRANT SELECT, INSERT, UPDATE ON experiment_learners, experiment_variant_sums TO "{aggregator}"'
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON experiment_versions TO "{api}"')
    op.execute(f'GRANT SELECT ON experiment_variant_sums TO "{api}"')


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS analytics_events_experiment_inputs")
    op.execute("DROP TABLE IF EXISTS experiment_variant_sums")
    op.execute("DROP TABLE IF EXISTS experiment_learners")
    op.execute("DROP TABLE IF EXISTS experiment_versions")
