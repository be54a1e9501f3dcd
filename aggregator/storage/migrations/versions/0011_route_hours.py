"""System metrics per UTC hour, route and method: the per-minute route rollup summed by hour.

Revision ID: 0011_route_hours
Revises: 0010_analysis
Create Date: 2026-12-03

``system_metrics_hourly`` has the columns of ``system_metrics`` (0002) with ``hour`` for
``minute``; the aggregator merges both in the same transaction from the same deltas
(``aggregator/consumer/rollups.py``), so a row of it always equals the sum of its hour's minute
rows (counts and histogram buckets add, minimum and maximum are kept). ``system/metrics`` reads
whole hours from it and the minutes of its partial ends from ``system_metrics``
(``aggregator/api/system.py``): a 24-hour window reads ~24 rows per route instead of 1,440.
Like its neighbour it is neither partitioned nor trimmed (one row per route and hour).

Existing minute rows are summed into it here, under a ``SHARE`` lock on ``system_metrics``: an
aggregator of this version waits for the migration, so nothing is counted twice or missed.
Rights as the other rollups' (0004): the aggregator reads, inserts and updates, the API reads;
the warehouse exporter gets nothing (it does not export this table, which is derived).
"""

import re

from alembic import context, op

revision = "0011_route_hours"
down_revision = "0010_analysis"
branch_labels = None
depends_on = None

TABLE = "system_metrics_hourly"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def upgrade() -> None:
    attributes = context.config.attributes
    aggregator, api = attributes["aggregator_role"], attributes["api_role"]
    for name in (aggregator, api):
        if not _NAME.match(name):
            raise ValueError(f"not a plain lower-case SQL name: {name!r}")
    op.execute(
        f"""
        CREATE TABLE {TABLE} (
            hour            timestamptz NOT NULL,
            route           text        NOT NULL,
            method          text        NOT NULL,
            requests        bigint      NOT NULL DEFAULT 0,
            errors          bigint      NOT NULL DEFAULT 0,
            client_errors   bigint      NOT NULL DEFAULT 0,
            errors_by_type  jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
            latency_sum_ms  double precision NOT NULL DEFAULT 0,
            latency_min_ms  double precision,
            latency_max_ms  double precision,
            latency_hist    jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
            changed_xid     bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
            PRIMARY KEY (hour, route, method)
        )
        """
    )
    op.execute("LOCK TABLE system_metrics IN SHARE MODE")
    op.execute(
        f"""
        INSERT INTO {TABLE} (hour, route, method, requests, errors, client_errors, errors_by_type,
                             latency_sum_ms, latency_min_ms, latency_max_ms, latency_hist)
        SELECT date_trunc('hour', minute), route, method, sum(requests), sum(errors),
               sum(client_errors), count_map_sum(errors_by_type), sum(latency_sum_ms),
               min(latency_min_ms), max(latency_max_ms), count_map_sum(latency_hist)
        FROM system_metrics GROUP BY 1, 2, 3
        """
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON {TABLE} TO "{aggregator}"')
    op.execute(f'GRANT SELECT ON {TABLE} TO "{api}"')


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {TABLE}")
