"""Rollup tables: gamification, hourly activity, AI coach, system metrics, dashboard summary.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Every per-user table carries ``user_hash`` (the pseudonym, a future distribution column).
Counters are additive (``x = x + EXCLUDED.x``), sets are unions, "latest" values are
last-writer-wins on ``(time, event_id)``: every update commutes, so the order in which
batches (or several aggregators) apply them does not matter. docs/aggregator.md explains
each table and why each index exists.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# DDSketch-style log buckets: relative accuracy ALPHA, GAMMA = (1 + ALPHA) / (1 - ALPHA);
# a positive value x falls in bucket ceil(log(x) / log(GAMMA)); x <= MIN_VALUE in bucket
# MIN_KEY. Kept in sync with aggregator/consumer/histogram.py (a test checks both agree).
HIST_ALPHA = 0.01
HIST_MIN_KEY = -1_000_000


def _raw_event_indexes() -> None:
    """Raw events: indexes chosen by measurement (docs/aggregator.md)."""
    # Time-range scans of raw events (exports, replays, retention checks) are rare; every query
    # of the API reads rollups. A BTREE on occurred_at made range counts ~3x faster but cut
    # COPY throughput by 25-45 % on the reference machine; BRIN cost nothing measurable per
    # insert and stays a few pages per partition, so BRIN it is. Rows arrive roughly in time
    # order inside a daily partition, which is what BRIN needs.
    op.execute(
        "CREATE INDEX IF NOT EXISTS analytics_events_occurred_brin ON analytics_events "
        "USING brin (occurred_at) WITH (pages_per_range = 32)"
    )
    # No per-user BTREE and no GIN on properties: no query filters raw events by user or by
    # JSONB containment, and each index is paid on the aggregator's hot path.


def _count_map_functions() -> None:
    """Mergeable count maps ({"key": count}) and their quantiles."""
    # The union of both maps, counts added where a key is in both. Only the (small) second map
    # is expanded: the stored map (hundreds of histogram buckets) is concatenated and probed by
    # key, ~4x cheaper than expanding and regrouping both; the aggregator calls this once per
    # updated row and map column.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION count_map_add(a jsonb, b jsonb) RETURNS jsonb
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT coalesce(a, '{}'::jsonb) || coalesce(b, '{}'::jsonb) || coalesce(
                (SELECT jsonb_object_agg(key, (a->>key)::bigint + value::bigint)
                 FROM jsonb_each_text(b) WHERE a ? key),
                '{}'::jsonb)
        $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE AGGREGATE count_map_sum(jsonb) (
            SFUNC = count_map_add, STYPE = jsonb, INITCOND = '{}', PARALLEL = SAFE
        )
        """
    )
    # q-quantile of a latency histogram (DDSketch estimate, relative error <= HIST_ALPHA).
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION hist_quantile(hist jsonb, q double precision)
        RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            WITH b AS (
                SELECT key::int AS k, value::bigint AS c FROM jsonb_each_text(hist)
            ), c AS (
                SELECT k, sum(c) OVER (ORDER BY k) AS cum, sum(c) OVER () AS n FROM b
            )
            SELECT CASE WHEN k = {HIST_MIN_KEY} THEN 0.0
                        ELSE 2.0 * power({(1 + HIST_ALPHA) / (1 - HIST_ALPHA)!r}::float8, k)
                             / ({(1 + HIST_ALPHA) / (1 - HIST_ALPHA)!r}::float8 + 1.0) END
            FROM c
            WHERE cum > floor(q * (n - 1))
            ORDER BY k
            LIMIT 1
        $$
        """
    )


def _gamification_stats() -> None:
    """Per-user gamification state."""
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS gamification_stats (
            user_hash         text PRIMARY KEY,
            xp_total          bigint      NOT NULL DEFAULT 0,
            level             integer     NOT NULL DEFAULT 1,
            achievements      text[]      NOT NULL DEFAULT '{}',
            current_streak    integer     NOT NULL DEFAULT 0,
            longest_streak    integer     NOT NULL DEFAULT 0,
            streak_as_of      timestamptz,
            streak_event_id   uuid,
            last_activity_at  timestamptz
        )
        """
    )


def _user_activity_hourly() -> None:
    """Per user per UTC hour (heatmaps in any time zone)."""
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS user_activity_hourly (
            user_hash            text        NOT NULL,
            hour                 timestamptz NOT NULL,
            events               integer     NOT NULL DEFAULT 0,
            sessions             integer     NOT NULL DEFAULT 0,
            study_seconds        double precision NOT NULL DEFAULT 0,
            materials_viewed     integer     NOT NULL DEFAULT 0,
            materials_completed  integer     NOT NULL DEFAULT 0,
            xp                   bigint      NOT NULL DEFAULT 0,
            ai_interactions      integer     NOT NULL DEFAULT 0,
            PRIMARY KEY (user_hash, hour)
        )
        """
    )
    # No index by hour alone: "active learners in a window" reads
    # gamification_stats.last_activity_at (indexed by revision 0003), not this table.


def _ai_coach_daily() -> None:
    """AI coach, per user per UTC day."""
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS ai_coach_metrics (
            user_hash         text    NOT NULL,
            day               date    NOT NULL,
            interactions      integer NOT NULL DEFAULT 0,
            tokens_in         bigint  NOT NULL DEFAULT 0,
            tokens_out        bigint  NOT NULL DEFAULT 0,
            latency_ms_sum    double precision NOT NULL DEFAULT 0,
            latency_hist      jsonb   NOT NULL DEFAULT '{}'::jsonb,
            models            jsonb   NOT NULL DEFAULT '{}'::jsonb,
            topics            jsonb   NOT NULL DEFAULT '{}'::jsonb,
            feedback_count    integer NOT NULL DEFAULT 0,
            rating_sum        integer NOT NULL DEFAULT 0,
            ratings           jsonb   NOT NULL DEFAULT '{}'::jsonb,
            PRIMARY KEY (user_hash, day)
        )
        """
    )


def _system_metrics() -> None:
    """System metrics, per minute per route and method."""
    # Dashboards read "all routes over a time window": the key leads with the minute.
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS system_metrics (
            minute          timestamptz NOT NULL,
            route           text        NOT NULL,
            method          text        NOT NULL,
            requests        bigint      NOT NULL DEFAULT 0,
            errors          bigint      NOT NULL DEFAULT 0,
            client_errors   bigint      NOT NULL DEFAULT 0,
            errors_by_type  jsonb       NOT NULL DEFAULT '{}'::jsonb,
            latency_sum_ms  double precision NOT NULL DEFAULT 0,
            latency_min_ms  double precision,
            latency_max_ms  double precision,
            latency_hist    jsonb       NOT NULL DEFAULT '{}'::jsonb,
            PRIMARY KEY (minute, route, method)
        )
        """
    )
    op.execute(
        f"COMMENT ON COLUMN system_metrics.latency_hist IS 'DDSketch log buckets of latency in ms: "
        f"{{bucket: count}}, bucket = ceil(ln(ms)/ln(gamma)), gamma = (1+a)/(1-a), a = {HIST_ALPHA}; "
        f"{HIST_MIN_KEY} holds values <= 1e-6 ms. Merge by count_map_sum, read with hist_quantile.'"
    )


def _hourly_summary() -> None:
    """Dashboard summary per UTC hour (incrementally maintained in the batch transaction)."""
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS hourly_analytics_summary (
            hour                 timestamptz PRIMARY KEY,
            events               bigint  NOT NULL DEFAULT 0,
            events_by_type       jsonb   NOT NULL DEFAULT '{}'::jsonb,
            active_users         integer NOT NULL DEFAULT 0,
            sessions             integer NOT NULL DEFAULT 0,
            study_seconds        double precision NOT NULL DEFAULT 0,
            materials_viewed     integer NOT NULL DEFAULT 0,
            materials_completed  integer NOT NULL DEFAULT 0,
            xp                   bigint  NOT NULL DEFAULT 0,
            ai_interactions      integer NOT NULL DEFAULT 0,
            api_requests         bigint  NOT NULL DEFAULT 0,
            api_errors           bigint  NOT NULL DEFAULT 0
        )
        """
    )


def upgrade() -> None:
    _raw_event_indexes()
    _count_map_functions()
    _gamification_stats()
    _user_activity_hourly()
    _ai_coach_daily()
    _system_metrics()
    _hourly_summary()


def downgrade() -> None:
    for table in (
        "hourly_analytics_summary",
        "system_metrics",
        "ai_coach_metrics",
        "user_activity_hourly",
        "gamification_stats",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP FUNCTION IF EXISTS hist_quantile(jsonb, double precision)")
    op.execute("DROP AGGREGATE IF EXISTS count_map_sum(jsonb)")
    op.execute("DROP FUNCTION IF EXISTS count_map_add(jsonb, jsonb)")
    op.execute("DROP INDEX IF EXISTS analytics_events_occurred_brin")
