"""The demo's pathway funnel truth against a brute force over every chain, and how learners move on."""

from __future__ import annotations

import itertools
import random
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.devtools import pathway

pytestmark = pytest.mark.unit

STEPS = 4
WINDOW_US = pathway.FUNNEL_WINDOW_S * 1_000_000

events = st.lists(
    st.tuples(st.integers(0, STEPS - 1), st.integers(0, 3 * WINDOW_US)), max_size=8, unique_by=lambda e: e[1]
)


def brute_force(learners: list[list[tuple[int, int]]], start: int, end: int) -> list[int]:
    """Every chain of every learner: the furthest step one reaches (ordered, within the window)."""
    counts = [0] * STEPS
    for evs in learners:
        best = 0
        for k in range(1, STEPS + 1):
            pools = [[t for s, t in evs if s == step] for step in range(k)]
            for chain in itertools.product(*pools):
                ordered = all(a < b for a, b in itertools.pairwise(chain))
                if ordered and start <= chain[0] < end and chain[-1] - chain[0] <= WINDOW_US:
                    best = max(best, k)
        for step in range(best):
            counts[step] += 1
    return counts


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=6), st.integers(0, WINDOW_US), st.integers(1, 3 * WINDOW_US))
def test_funnel_truth_is_the_brute_force_count(
    learners: list[list[tuple[int, int]]], start: int, span: int
) -> None:
    got = pathway.funnel_truth(learners, STEPS, start, start + span)
    assert got == brute_force(learners, start, start + span)
    assert all(a >= b for a, b in itertools.pairwise(got))


@pytest.mark.parametrize("seed", range(20))
def test_learners_move_through_modules_in_order_and_gone_is_gone(seed: int) -> None:
    rng = random.Random(seed)
    course = pathway.PATHWAYS["cardiology-basics"]
    state = pathway.PathwayState()
    done: list[int] = []
    for day in range(200):
        work = pathway.next_module(rng, course, state, date.fromordinal(739_000 + day))
        if work is None:
            continue
        assert work.index == len(done)  # always the next module
        if work.completed:
            done.append(work.index)
    assert state.next_module == len(done) <= len(course.modules)
    if state.paused_until == pathway.GONE:
        assert state.next_module < len(course.modules)
