"""The one list of PostgreSQL tables that hold rows about one learner.

A feature that adds a per-learner table (experiment assignments, custom events, saved funnels...)
adds **one line** here; ``learner export``, ``learner erase`` and their verification pass then cover
it, and ``tests/aggregator/learners/test_registry.py`` fails while a table with a ``user_hash``
column is neither listed nor in :data:`NOT_PER_LEARNER`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LearnerTable:
    """A table with rows about one learner each.

    ``column``: the learner's ``user.hash`` pseudonym. ``lrs_expression``: an SQL expression
    holding the learner's LRS pseudonym (``user.lrs_hash``), where the table keeps one.
    ``order_by``: a stable order for the access export.
    """

    table: str
    order_by: str
    column: str = "user_hash"
    lrs_expression: str | None = None


LEARNER_TABLES: tuple[LearnerTable, ...] = (
    LearnerTable("analytics_events", "occurred_at, event_id", lrs_expression="properties->>'lrs_actor'"),
    LearnerTable("learning_sessions", "started_at, session_id"),
    LearnerTable("daily_activity_summary", "day"),
    LearnerTable("gamification_stats", "user_hash"),
    LearnerTable("user_activity_hourly", "hour"),
    LearnerTable("ai_coach_metrics", "day"),
    # A learner's exposure and metric totals per experiment (0013); the per-variant sums they fed stay,
    # like every aggregate of at least k learners (docs/privacy.md).
    LearnerTable("experiment_learners", "experiment_key, version"),
    # First activity and key link per pseudonym (0020_funnels_finish): funnels and retention.
    LearnerTable("analysis_learners", "user_hash"),
)
"""Every per-learner table: rows deleted by an erasure, written by an access export."""

NOT_PER_LEARNER: dict[str, str] = {
    "analysis_events": "a view over analytics_events (its rows go with them)",
    "analytics_system_events": "the citus variant's events without a learner (user_hash NULL, a CHECK)",
}
"""Relations with a ``user_hash`` column that are not erased row by row, and why."""

AUDIT_TABLE = "access_audit_log"
"""Append-only: an erasure replaces the learner's pseudonyms in it (actor or subject) by
``erased:<digest>`` (revision 0015_erasure) and appends its receipt; it deletes nothing there."""
