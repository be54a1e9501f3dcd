"""``analysis_learners`` (revision 0020_funnels_finish): each pseudonym's first learning event and key link.

Funnels and retention read it (``aggregator/analysis/loader.py``): a learner's first activity outlives
raw retention here, and ``previous_hash`` links the two pseudonyms of one learner across an analytics
key rotation (docs/analytics.md, "Key rotation"). Both merges are idempotent (the earliest time wins,
a link once set stays), so a redelivered, reordered or replayed event cannot change a row twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg

from .mapping import PREVIOUS_HASH_FIELD, EventRow

NOT_LEARNING = frozenset({"api_request", "system_metric"})
"""Never a learner's activity (the event-sequence store leaves them out too)."""

UPSERT = """
INSERT INTO analysis_learners AS a (user_hash, first_activity_at, previous_hash)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[]) ORDER BY 1
ON CONFLICT (user_hash) DO UPDATE SET
    first_activity_at = least(a.first_activity_at, EXCLUDED.first_activity_at),
    previous_hash = coalesce(a.previous_hash, EXCLUDED.previous_hash)
WHERE EXCLUDED.first_activity_at < a.first_activity_at
   OR (a.previous_hash IS NULL AND EXCLUDED.previous_hash IS NOT NULL)
"""
"""Rows in key order (the lock order every merge keeps); unchanged rows are not rewritten."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LearnerFirsts:
    """Per pseudonym of a batch: its earliest learning event (time_us) and its previous pseudonym."""

    __slots__ = ("first_us", "previous")

    def __init__(self) -> None:
        self.first_us: dict[str, int] = {}
        self.previous: dict[str, str] = {}

    def add(self, rows: Iterable[EventRow]) -> None:
        first, previous = self.first_us, self.previous
        for row in rows:
            user = row.user_hash
            if user is None or row.event_type in NOT_LEARNING:
                continue
            known = first.get(user)
            if known is None or row.time_us < known:
                first[user] = row.time_us
            link = row.properties.get(PREVIOUS_HASH_FIELD)
            if type(link) is str and link != user:
                previous.setdefault(user, link)

    async def apply(self, conn: asyncpg.Connection) -> None:
        """Merge into ``analysis_learners`` (inside the batch transaction)."""
        if not self.first_us:
            return
        users = sorted(self.first_us)
        await conn.execute(
            UPSERT,
            users,
            [_EPOCH + timedelta(microseconds=self.first_us[u]) for u in users],
            [self.previous.get(u) for u in users],
        )
