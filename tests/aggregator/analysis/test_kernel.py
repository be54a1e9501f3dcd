"""The compiled kernels (aggregator/analysis/funnel_kernel.c, retention_kernel.c): built, safe, and
equal to the numpy engine on inputs nobody designed (server-free).

The brute-force comparisons of both engines live in test_engine.py; here the kernel meets random
sequences (ties, bursts of one type, any order of steps) and arguments a caller could get wrong.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.analysis import funnels, kernels, retention
from studyin_analytics.aggregator.analysis.definitions import (
    Exclusion,
    FunnelDefinition,
    FunnelStep,
    RetentionDefinition,
)
from studyin_analytics.aggregator.analysis.funnels import learner_funnel
from studyin_analytics.aggregator.analysis.periods import US, offset_table, period_number
from studyin_analytics.aggregator.analysis.store import EventBatch, EventStore

pytestmark = pytest.mark.unit
TYPES = ("session_start", "material_view", "material_complete", "session_end")
BASE = datetime(2026, 11, 2, tzinfo=UTC)


def test_the_kernel_is_built() -> None:
    """`make install` compiles it; without it long funnels fall back to the slower numpy engine."""
    assert funnels.KERNEL is not None, (
        "aggregator/analysis/_funnel_kernel is missing: `pip install -e .` needs a C compiler (gcc or cc) "
        "and the Python headers; the install log shows why the optional extension was skipped"
    )


def _store(events: list[tuple[int, int, int]]) -> EventStore:
    store = EventStore()
    store.merge(
        EventBatch.of_rows(
            [
                {"user_hash": f"k1:{u:032x}", "time_us": t * 1_000_000, "event_type": TYPES[e], "tie": i}
                for i, (u, t, e) in enumerate(events)
            ]
        )
    )
    return store


events_strategy = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, len(TYPES) - 1)), min_size=1, max_size=60
)


@st.composite
def definitions(draw: st.DrawFn) -> FunnelDefinition:
    n = draw(st.integers(2, 12))
    steps = [
        FunnelStep(
            event=draw(st.sampled_from(TYPES)),
            optional=0 < k < n - 1 and draw(st.booleans()),
            within_s=draw(st.sampled_from((None, 1, 3, 10))) if k else None,
        )
        for k in range(n)
    ]
    order = draw(st.sampled_from(("strict", "ordered")))
    exclusions = []
    if order == "ordered":
        for _ in range(draw(st.integers(0, 2))):
            lo = draw(st.integers(1, n - 1))
            exclusions.append(
                Exclusion(
                    event=draw(st.sampled_from(TYPES)), from_step=lo, to_step=draw(st.integers(lo + 1, n))
                )
            )
    start = BASE + timedelta(seconds=draw(st.integers(0, 10)))
    return FunnelDefinition(
        steps=tuple(steps),
        order=order,
        exclusions=tuple(exclusions),
        window_s=draw(st.integers(1, 30)),
        start=start,
        end=start + timedelta(seconds=draw(st.integers(1, 30))),
    )


@settings(max_examples=400, deadline=None)
@given(raw=events_strategy, definition=definitions())
def test_the_kernel_equals_the_numpy_engine(
    raw: list[tuple[int, int, int]], definition: FunnelDefinition
) -> None:
    events = [(u, int(BASE.timestamp()) + t, e) for u, t, e in raw]
    store = _store(events)
    compiled = learner_funnel(store, definition)
    numpy_engine = learner_funnel(store, definition, kernel=None)
    assert compiled.learners.tolist() == numpy_engine.learners.tolist()
    assert compiled.entry_pos.tolist() == numpy_engine.entry_pos.tolist()
    assert compiled.reached.tolist() == numpy_engine.reached.tolist()
    assert compiled.first_us.tolist() == numpy_engine.first_us.tolist()


@settings(max_examples=200, deadline=None)
@given(raw=events_strategy, n=st.integers(2, 4), window=st.integers(1, 30), order=st.permutations(TYPES))
def test_any_order_equals_the_numpy_engine(
    raw: list[tuple[int, int, int]], n: int, window: int, order: list[str]
) -> None:
    store = _store([(u, int(BASE.timestamp()) + t, e) for u, t, e in raw])
    d = FunnelDefinition(
        steps=tuple(FunnelStep(event=e) for e in order[:n]),
        order="any",
        window_s=window,
        start=BASE + timedelta(seconds=5),
        end=BASE + timedelta(seconds=25),
    )
    compiled, numpy_engine = learner_funnel(store, d), learner_funnel(store, d, kernel=None)
    assert compiled.learners.tolist() == numpy_engine.learners.tolist()
    assert compiled.entry_pos.tolist() == numpy_engine.entry_pos.tolist()
    assert compiled.reached.tolist() == numpy_engine.reached.tolist()


def test_an_empty_store_has_no_learners() -> None:
    d = FunnelDefinition(
        steps=(FunnelStep(event="session_start"), FunnelStep(event="session_end")),
        start=BASE,
        end=BASE + timedelta(1),
    )
    assert len(learner_funnel(EventStore(), d).learners) == 0


def _args(**change: object) -> list[object]:
    """A valid call of ``ordered``: one learner, rows (t=1, type 0) and (t=2, type 1), steps 0 then 1."""
    args: dict[str, object] = {
        "matchers": [(0, 0b01, ()), (1, 0b10, ())],
        "offsets": np.array([0, 2], np.int64),
        "time": np.array([1, 2], np.int64),
        "etype": np.array([0, 1], np.int16),
        "within": np.full(2, -1, np.int64),
        "optional": 0,
        "window": 10,
        "t0": 0,
        "t1": 5,
        "strict": False,
        "out_learner": np.empty(1, np.int64),
        "out_entry": np.empty(1, np.int64),
        "out_first": np.empty(2, np.int64),
    }
    args.update(change)
    return list(args.values())


def test_the_kernel_answers_a_valid_call() -> None:
    kernel = funnels.KERNEL
    assert kernel is not None
    first = np.empty(2, np.int64)
    assert kernel.ordered(*_args(out_first=first)) == 1
    assert first.tolist() == [1, 2]


FILTER = (np.zeros(2, np.int32), np.array([0], np.int32))
BAD_CALLS = {
    "offsets past the rows": ({"offsets": np.array([0, 3], np.int64)}, ValueError),
    "offsets not increasing": ({"offsets": np.array([0, 2, 1], np.int64)}, ValueError),
    "no offsets": ({"offsets": np.empty(0, np.int64)}, ValueError),
    "time of the wrong width": ({"time": np.array([1, 2], np.int32)}, TypeError),
    "etype shorter than time": ({"etype": np.zeros(1, np.int16)}, ValueError),
    "not 1-d": ({"time": np.zeros((1, 2), np.int64)}, TypeError),
    "no room for n x cap": ({"out_first": np.empty(1, np.int64)}, ValueError),
    "outputs of different lengths": ({"out_learner": np.empty(0, np.int64)}, ValueError),
    "more steps than the kernel keeps": ({"within": np.full(40, -1, np.int64)}, ValueError),
    "a negative window": ({"window": -1}, ValueError),
    "too many matchers": ({"matchers": [(0, 1, ())] * 33}, ValueError),
    "a matcher not (type, bits, filters)": ({"matchers": [(0, 1)]}, TypeError),
    "too many filters": ({"matchers": [(0, 1, (FILTER,) * 5)]}, ValueError),
    "a filter column of another length": (
        {"matchers": [(0, 1, ((np.zeros(3, np.int32), FILTER[1]),))]},
        ValueError,
    ),
    "filter codes of the wrong width": (
        {"matchers": [(0, 1, ((FILTER[0], np.zeros(1, np.int64)),))]},
        TypeError,
    ),
    "a list instead of an array": ({"time": [1, 2]}, TypeError),
}


@pytest.mark.parametrize(("change", "error"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_the_kernel_refuses_bad_arguments(change: dict[str, object], error: type[Exception]) -> None:
    kernel = funnels.KERNEL
    assert kernel is not None
    with pytest.raises(error):
        kernel.ordered(*_args(**change))


def test_the_kernel_refuses_read_only_output() -> None:
    kernel = funnels.KERNEL
    assert kernel is not None
    out = np.empty(1, np.int64)
    out.setflags(write=False)
    with pytest.raises((TypeError, BufferError, ValueError)):
        kernel.ordered(*_args(out_learner=out))


def test_too_little_output_room_is_an_error_not_an_overflow() -> None:
    kernel = funnels.KERNEL
    assert kernel is not None
    args = _args(
        offsets=np.array([0, 1, 2], np.int64),  # two learners, each entering
        etype=np.array([0, 0], np.int16),
    )
    with pytest.raises(ValueError, match="fewer places"):
        kernel.ordered(*args)


def test_a_row_ending_two_chains_keeps_the_latest_start() -> None:
    """Steps A, B, B (optional), C with a 10 s window: B@9 ends step 2 of the chain A@8 (and, skipping
    the optional step, may precede C) and also ends step 3 of the older chain A@0-B@1. C@15 follows
    the chain started at 8 (7 s), not the one started at 0 (15 s): the slot must keep start 8."""
    s = int(BASE.timestamp())
    events = [(0, s, 0), (0, s + 1, 1), (0, s + 8, 0), (0, s + 9, 1), (0, s + 15, 2)]
    store = _store(events)
    d = FunnelDefinition(
        steps=(
            FunnelStep(event=TYPES[0]),
            FunnelStep(event=TYPES[1]),
            FunnelStep(event=TYPES[1], optional=True),
            FunnelStep(event=TYPES[2]),
        ),
        window_s=10,
        start=BASE,
        end=BASE + timedelta(seconds=20),
    )
    for kernel in (funnels.KERNEL, None):
        assert learner_funnel(store, d, kernel).reached[:, 0].tolist() == [True, True, True, True]


# --- the retention pass (retention_kernel.c) -------------------------------------------------------

ZONES = ("UTC", "Europe/Berlin", "Asia/Kathmandu", "America/Havana", "Australia/Lord_Howe", "Pacific/Chatham")
"""Whole-hour DST, a +05:45 zone, DST changes at midnight, a 30-minute DST shift, +12:45/+13:45."""


def test_the_retention_kernel_is_built() -> None:
    assert kernels.RETENTION is not None, (
        "aggregator/analysis/_retention_kernel is missing: `pip install -e .` needs a C compiler"
    )


@settings(max_examples=300, deadline=None)
@given(
    times=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 400 * 86_400 * US)), min_size=1, max_size=80),
    zone=st.sampled_from(ZONES),
    period=st.sampled_from(("day", "week", "month")),
    offset=st.integers(-3, 3),
)
def test_the_retention_kernel_marks_the_cells_numpy_marks(
    times: list[tuple[int, int]], zone: str, period: str, offset: int
) -> None:
    """Random instants over 400 days from 2026-03-01 (every DST change of a year, both ways)."""
    start = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()) * US
    store = EventStore()
    store.merge(
        EventBatch.of_rows(
            [
                {"user_hash": f"k1:{u:032x}", "time_us": start + t, "event_type": "session_start", "tie": i}
                for i, (u, t) in enumerate(times)
            ]
        )
    )
    d = RetentionDefinition(
        start=(datetime(2026, 3, 1) + timedelta(days=30 * offset + 60)).date(),
        cohorts=6,
        periods=6,
        period=period,  # type: ignore[arg-type]
        timezone=zone,
    )
    first = period_number(d.start, d.period)
    span = d.cohorts + d.periods + 1
    compiled = retention._activity_cells(store, d, first, span, kernels.RETENTION)
    numpy_only = retention._activity_cells(store, d, first, span, None)
    assert compiled.tolist() == numpy_only.tolist()


@pytest.mark.parametrize(
    "change",
    [
        {"offsets": np.array([0, 5], np.int64)},  # past the rows
        {"starts": np.empty(0, np.int64), "shift": np.empty(0, np.int64)},  # no transition
        {"shift": np.zeros(2, np.int64)},  # shift and starts of different lengths
        {"cells": np.zeros(3, np.uint8)},  # not learners x span
        {"kind": 3},
        {"time": np.zeros(2, np.int32)},
    ],
)
def test_the_retention_kernel_refuses_bad_arguments(change: dict[str, object]) -> None:
    kernel = kernels.RETENTION
    assert kernel is not None
    args: dict[str, object] = {
        "offsets": np.array([0, 2], np.int64),
        "time": np.array([1, 2], np.int64),
        "starts": np.array([-(1 << 62)], np.int64),
        "shift": np.zeros(1, np.int64),
        "kind": 0,
        "first": 0,
        "span": 2,
        "cells": np.zeros(2, np.uint8),
    }
    args.update(change)
    with pytest.raises((ValueError, TypeError)):
        kernel.mark(*args.values())


@pytest.mark.parametrize(
    "zone", ["America/Santiago", "America/Havana", "Europe/Berlin", "Australia/Lord_Howe"]
)
def test_the_retention_kernel_is_exact_at_the_instant_of_an_offset_change(zone: str) -> None:
    """Rows at each 2026 offset change of the zone and a microsecond either side, one learner per row
    and one learner with them all: each marks the day zoneinfo gives (Santiago's April change at
    local midnight moves the day back)."""
    year = (
        int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * US,
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()) * US,
    )
    starts, _ = offset_table(zone, *year)
    instants = [int(s) + d for s in starts[1:] if year[0] <= s < year[1] for d in (-1, 0, 1)]
    assert len(instants) >= 6, "the zone changes its offset twice in 2026"
    store = EventStore()
    store.merge(
        EventBatch.of_rows(
            [
                {"user_hash": f"k1:{i:032x}", "time_us": t, "event_type": "session_start", "tie": i}
                for i, t in enumerate(instants)
            ]
            + [
                {"user_hash": "k1:all", "time_us": t, "event_type": "session_start", "tie": i}
                for i, t in enumerate(instants)
            ]
        )
    )
    d = RetentionDefinition(start=date(2026, 1, 1), cohorts=90, periods=90, period="day", timezone=zone)
    first = period_number(d.start, "day")
    span = d.cohorts + d.periods + 1
    cells = retention._activity_cells(store, d, first, span, kernels.RETENTION).reshape(-1, span)

    def day(t: int) -> int:
        return (datetime.fromtimestamp(t / US, UTC).astimezone(ZoneInfo(zone)).date() - d.start).days

    for code, name in enumerate(store.learners.values):
        times = instants if name == "k1:all" else [instants[int(name.removeprefix("k1:"), 16)]]
        expected = sorted({day(t) for t in times if 0 <= day(t) < span})
        assert np.flatnonzero(cells[code]).tolist() == expected, (zone, name)


@st.composite
def raw_kernel_calls(draw: st.DrawFn) -> tuple[str, list[object]]:
    """Arrays no store would hold (unsorted times, negative and unknown types, arbitrary bits and
    codes) in calls the binding accepts: memory safety, not answers (also run under AddressSanitizer)."""
    rows = draw(st.integers(0, 30))
    cuts = sorted(draw(st.lists(st.integers(0, rows), max_size=6)))
    offsets = np.array([0, *cuts, rows], np.int64)
    time = np.array(draw(st.lists(st.integers(-(2**62), 2**62), min_size=rows, max_size=rows)), np.int64)
    etype = np.array(draw(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=rows, max_size=rows)), np.int16)
    codes = st.integers(-(2**31), 2**31 - 1)
    column = st.lists(codes, min_size=rows, max_size=rows).map(lambda c: np.array(c, np.int32))
    allowed = st.lists(codes, max_size=4).map(lambda c: np.array(sorted(c), np.int32))
    matcher = st.tuples(
        st.integers(-5, 40), st.integers(0, 2**64 - 1), st.lists(st.tuples(column, allowed), max_size=4)
    )
    matchers = draw(st.lists(matcher, max_size=8))
    n = draw(st.integers(1, 32))
    cap = len(offsets) - 1
    window, t0, t1 = (draw(st.integers(0, 2**62)) for _ in range(3))
    if draw(st.booleans()):
        within = np.array(draw(st.lists(st.integers(-5, 2**62), min_size=n, max_size=n)), np.int64)
        out = [np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(n * cap, np.int64)]
        optional = draw(st.integers(0, 2**32 - 1))
        return "ordered", [
            matchers,
            offsets,
            time,
            etype,
            within,
            optional,
            window,
            t0,
            t1,
            draw(st.booleans()),
            *out,
        ]
    out = [np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64)]
    return "any_order", [matchers, offsets, time, etype, n, window, t0, t1, *out]


@settings(max_examples=500, deadline=None)
@given(call=raw_kernel_calls())
def test_the_funnel_kernel_survives_arrays_no_store_holds(call: tuple[str, list[object]]) -> None:
    name, args = call
    count = getattr(funnels.KERNEL, name)(*args)
    assert 0 <= count <= len(args[1]) - 1  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.integers(-(2**62), 2**62), max_size=30),
    starts=st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=5),
    kind=st.integers(0, 2),
    first=st.integers(-(2**40), 2**40),
    span=st.integers(0, 20),
)
def test_the_retention_kernel_survives_arrays_no_store_holds(
    rows: list[int], starts: list[int], kind: int, first: int, span: int
) -> None:
    kernel = kernels.RETENTION
    assert kernel is not None
    offsets = np.array([0, len(rows) // 2, len(rows)], np.int64)
    cells = np.zeros(2 * span, np.uint8)
    shift = np.array([s % (86_400 * US) for s in starts], np.int64)
    kernel.mark(
        offsets, np.array(rows, np.int64), np.array(starts, np.int64), shift, kind, first, span, cells
    )
    assert set(cells.tolist()) <= {0, 1}
