"""Event rows keep the raw row's primary key stable across versions (pure functions, no servers)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from studyin_analytics.aggregator.consumer.mapping import micros_of, time_of

pytestmark = pytest.mark.unit

NS = 1_000_000_000


def test_event_times_round_as_the_stored_rows_of_earlier_versions() -> None:
    """``occurred_at`` is part of the primary key: a replay across an upgrade must map to the same
    time as ``datetime.fromtimestamp(ns / 1e9)``, which earlier versions stored, to the microsecond
    (half a microsecond, the end of a second and whole seconds included)."""
    rng = random.Random(20261201)
    cases = [rng.randrange(0, 4_000_000_000 * NS) for _ in range(50_000)]
    for _ in range(20_000):
        second, micro = rng.randrange(1_600_000_000, 1_900_000_000), rng.randrange(0, 1_000_000)
        base = second * NS + micro * 1000
        cases += [base, base + 499, base + 500, base + 501, second * NS + 999_999_500 + rng.randrange(0, 500)]
    wrong = [ns for ns in cases if time_of(micros_of(ns)) != datetime.fromtimestamp(ns / 1e9, tz=UTC)]
    assert wrong == []
    # Rounded, not truncated: 0.9 us past a microsecond is the next one.
    assert micros_of(1_700_000_000_000_000_900) == 1_700_000_000_000_001
