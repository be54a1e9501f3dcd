"""Rollup counting as pure functions (no servers): wire entries -> rows_from_span -> Rollup.add gives,
per learner and day, the counts of the independent ground truth (tests/support/workload/truth.py),
whatever the order of the rows; a field the rollups cannot use is a RollupInputError naming it.
(Sessions and study time are settled when a rollup is applied: tests/aggregator/consumer/test_rollups.py.)"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from studyin_analytics.aggregator.consumer.mapping import EventRow, rows_from_span
from studyin_analytics.aggregator.consumer.rollups import Rollup, RollupInputError
from studyin_analytics.exporter import wire
from tests.support.pipeline import PSEUDONYMIZER
from tests.support.workload import Workload, build, event_span, truth_of

pytestmark = pytest.mark.unit

DAY_US = 86_400 * 1_000_000


def _rows(workload: Workload) -> list[EventRow]:
    rows: list[EventRow] = []
    for entry in workload.entries:
        fields = {(k.encode() if isinstance(k, str) else k): v for k, v in entry.items()}
        for span in wire.decode_entry(fields):
            rows.extend(rows_from_span(span))
    return rows


def _counts(rollup: Rollup) -> dict[tuple[str, object], tuple[int, int, int, int]]:
    """(user, UTC date) -> (viewed, completed, xp, events) of the rollup's daily rows."""
    out = {}
    for (user, day), row in rollup.daily.items():
        when = datetime.fromtimestamp(day * DAY_US / 1e6, tz=UTC).date()
        out[(user, when)] = (int(row[2]), int(row[3]), int(row[4]), int(row[5]))
    return out


def test_daily_counts_equal_the_ground_truth_in_any_order() -> None:
    workload = build(PSEUDONYMIZER, users=40, seed=3)
    truth = truth_of(workload)
    want = {key: (int(v[2]), int(v[3]), int(v[4]), int(v[5])) for key, v in truth.daily.items()}
    rows = _rows(workload)
    for seed in range(3):
        random.Random(seed).shuffle(rows)
        rollup = Rollup()
        rollup.add(rows)
        assert _counts(rollup) == want
        assert sum(rollup.by_type.values()) == len(rows)


def test_a_field_the_rollups_cannot_use_names_the_field() -> None:
    span = event_span(PSEUDONYMIZER, "studyin.xp_awarded", {"studyin.xp.amount": "ten"})
    with pytest.raises(RollupInputError, match="xp_amount"):
        Rollup().add(rows_from_span(span))
