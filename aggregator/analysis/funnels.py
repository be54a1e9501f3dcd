"""The funnel engine: exact learner-level funnels over the event-sequence store, vectorized.

Ordered and strict funnels are one dynamic programme over the steps. For step ``k`` the
engine keeps every event that ends a valid chain through step ``k`` together with the
*latest start* among those chains (the most room left in the overall window: a chain's future
depends only on its last event and its start, so the latest start dominates). Step ``k+1``'s
candidates then look up their predecessors with binary searches: the previous row (strict),
or every earlier row of the learner, bounded by the per-step window and the last exclusion
(ordered). Along one learner's rows the latest start of the predecessors never decreases (by
induction: step 1's starts are its own times; a candidate takes its last allowed predecessor's
start, and optional steps merge two such sequences), so the best predecessor in an allowed
range is simply the last one: one binary search, no range-maximum structure. Optional steps pass their
predecessors on. Cost per step: O(candidates · log predecessors), independent of how many
events lie between steps; chains that failed are gone, so later steps of a funnel most
learners leave cost little.

Any order: each step event in the range starts a window (itself and the later rows within
``window_s``); a start followed by another event of the same step, with no other step event
between, is dominated and dropped. Definitions: docs/analytics.md.

Ordered and strict funnels normally run in the compiled single pass (``funnel_kernel.c``: one
slot per step, O(rows of the funnel's matchers) whatever the number of steps); the dynamic
programme above is the fallback when the extension was not built (no C compiler at install),
and both are checked against the brute-force reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from . import kernels
from .definitions import EventMatcher, FunnelDefinition
from .periods import US
from .store import I64, EventStore

B = npt.NDArray[np.bool_]
UNSET = np.iinfo(np.int64).min
"""The kernel's "never reached"."""
EXCLUDED_BIT = 32
"""The kernel's bits: ``1 << k`` the row matches step k, ``1 << (32 + k)`` it is excluded before step k."""
KERNEL = kernels.FUNNEL


@dataclass
class LearnerFunnel:
    """Per entering learner (sorted codes): which steps it reached and when it first did."""

    learners: I64
    entry_pos: I64
    """Row of the learner's first entering event (its breakdown value comes from there)."""
    reached: B
    """(steps, learners)"""
    first_us: I64
    """(steps, learners) time the learner first reached the step; -1 if never. Any order: -1."""


def _us(definition: FunnelDefinition) -> tuple[int, int]:
    return int(definition.start.timestamp() * US), int(definition.end.timestamp() * US)


def _first_at_or_after(time: I64, lo: I64, hi: I64, x: I64) -> I64:
    """First row in ``[lo, hi]`` with ``time >= x`` (``hi`` itself qualifies); vectorized bisection."""
    lo, hi = lo.copy(), hi.copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        before = time[mid] < x
        lo = np.where(active & before, mid + 1, lo)
        hi = np.where(active & ~before, mid, hi)


def _merge_preds(a_pos: I64, a_start: I64, b_pos: I64, b_start: I64) -> tuple[I64, I64]:
    """Union by row, keeping the latest start of a row present in both."""
    pos = np.concatenate([a_pos, b_pos])
    start = np.concatenate([a_start, b_start])
    order = np.lexsort((start, pos))
    pos, start = pos[order], start[order]
    last = np.ones(len(pos), bool)
    last[:-1] = pos[1:] != pos[:-1]
    return pos[last], start[last]


def _exclusion_rows(store: EventStore, definition: FunnelDefinition, step: int) -> I64 | None:
    """Rows of the exclusions that apply to the transition into 0-based ``step``."""
    rows = [store.positions(ex) for ex in definition.exclusions if ex.from_step < step + 1 <= ex.to_step]
    if not rows:
        return None
    return np.unique(np.concatenate(rows))


def _from_predecessors(
    store: EventStore,
    definition: FunnelDefinition,
    k: int,
    cand: I64,
    pred_pos: I64,
    pred_start: I64,
    excluded: I64 | None,
) -> tuple[I64, I64]:
    """Step ``k`` driven by the predecessors, when no later step has a per-step window or exclusion.

    Strict: the row right after each predecessor. Ordered: the first step-``k`` row after each
    predecessor. A later one has the same start and fewer rows after it, meets this step's own
    window and exclusions no better, and no later step bounds the time or rows from it, so it can
    never do better (and the earliest valid row, the learner's first reach, is always one of
    these). Cost O(predecessors · log candidates): the rows of the step's type are never
    scanned, so steps most learners never reach cost almost nothing.
    """
    step = definition.steps[k]
    time, learner = store.time, store.learner
    if not len(cand):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if definition.order == "strict":
        rows = pred_pos + 1
        idx = np.searchsorted(cand, rows)
        idxc = np.minimum(idx, len(cand) - 1)
        ok = (idx < len(cand)) & (cand[idxc] == rows)
    else:
        idx = np.searchsorted(cand, pred_pos, side="right")
        ok = idx < len(cand)
        rows = cand[np.minimum(idx, len(cand) - 1)]
    rows = np.minimum(rows, len(store) - 1)
    ok &= learner[rows] == learner[pred_pos]
    ok &= time[rows] - pred_start <= definition.window_s * US
    if step.within_s is not None:
        ok &= time[rows] - time[pred_pos] <= step.within_s * US
    if excluded is not None and len(excluded):
        # an excluded row strictly between the predecessor and the row
        ok &= np.searchsorted(excluded, pred_pos, side="right") == np.searchsorted(excluded, rows)
    rows, starts = rows[ok], pred_start[ok]
    # Several predecessors may lead to one row: keep the latest start (the last of the run).
    last = np.ones(len(rows), bool)
    last[:-1] = rows[1:] != rows[:-1]
    return rows[last], starts[last]


def _step_candidates(
    store: EventStore, definition: FunnelDefinition, k: int, pred_pos: I64, pred_start: I64, t0: int
) -> tuple[I64, I64]:
    """Rows of step ``k`` that end a valid chain, and the latest start of such a chain."""
    step = definition.steps[k]
    time, learner = store.time, store.learner
    if not len(pred_pos):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    cand = store.positions(step)
    excluded = _exclusion_rows(store, definition, k)
    later_bounds = any(
        definition.steps[j].within_s is not None or _exclusion_rows(store, definition, j) is not None
        for j in range(k + 1, len(definition.steps))
    )
    if definition.order == "strict" or not later_bounds:
        return _from_predecessors(store, definition, k, cand, pred_pos, pred_start, excluded)
    # Cheap cut before any binary search (per-learner tables, small and cache-resident): a
    # candidate needs a predecessor row before it and must lie within the window of the
    # learner's latest start (starts never decrease along a learner's predecessors).
    pred_learner = learner[pred_pos]
    first_pred = np.full(store.learner_count, np.iinfo(np.int64).max, np.int64)
    last_start = np.full(store.learner_count, np.iinfo(np.int64).min // 2, np.int64)
    first_pred[pred_learner[::-1]] = pred_pos[::-1]
    last_start[pred_learner] = pred_start
    cand_learner = learner[cand]
    cand = cand[
        (cand > first_pred[cand_learner])
        & (time[cand] <= last_start[cand_learner] + definition.window_s * US)
    ]
    if not len(cand):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    tc = time[cand]
    lstart = store.offsets[learner[cand]]
    window = definition.window_s * US
    hi = np.searchsorted(pred_pos, cand, side="left") - 1
    lo_row = lstart
    if step.within_s is not None:
        lo_row = _first_at_or_after(time, lstart, cand, tc - step.within_s * US)
    if excluded is not None and len(excluded):
        j = np.searchsorted(excluded, cand) - 1
        last = excluded[np.maximum(j, 0)]
        # strictly between: the excluded row itself may still be the predecessor
        after = np.where((j >= 0) & (last >= lstart), last, lstart)
        lo_row = np.maximum(lo_row, after)
    lo = np.searchsorted(pred_pos, lo_row, side="left")
    ok = hi >= lo
    # Starts never decrease along a learner's predecessors (module doc), so the latest
    # start among the allowed predecessors [lo, hi] is the last one's.
    best = np.where(ok, pred_start[np.maximum(hi, 0)], np.iinfo(np.int64).min)
    ok &= best >= tc - window
    return cand[ok], best[ok]


def _first_per_learner(store: EventStore, rows: I64) -> tuple[I64, I64]:
    """(learner codes, first row) of sorted ``rows``."""
    # Rows are sorted, so their learners are too: the first of each run, without a sort.
    learners = store.learner[rows].astype(np.int64)
    first = np.ones(len(rows), bool)
    first[1:] = learners[1:] != learners[:-1]
    return learners[first], rows[first]


def _ordered(store: EventStore, definition: FunnelDefinition) -> LearnerFunnel:
    t0, t1 = _us(definition)
    n = len(definition.steps)
    entry = store.positions(definition.steps[0])
    te = store.time[entry]
    entry = entry[(te >= t0) & (te < t1)]
    learners, entry_pos = _first_per_learner(store, entry)
    reached = np.zeros((n, len(learners)), bool)
    first_us = np.full((n, len(learners)), -1, np.int64)
    reached[0] = True
    first_us[0] = store.time[entry_pos]
    pred_pos, pred_start = entry, store.time[entry]
    for k in range(1, n):
        rows, starts = _step_candidates(store, definition, k, pred_pos, pred_start, t0)
        got, first_row = _first_per_learner(store, rows)
        where = np.searchsorted(learners, got)
        reached[k, where] = True
        first_us[k, where] = store.time[first_row]
        if definition.steps[k].optional:
            pred_pos, pred_start = _merge_preds(pred_pos, pred_start, rows, starts)
        else:
            pred_pos, pred_start = rows, starts
    return LearnerFunnel(learners, entry_pos, reached, first_us)


def _any_order(store: EventStore, definition: FunnelDefinition) -> LearnerFunnel:
    t0, t1 = _us(definition)
    n = len(definition.steps)
    window = definition.window_s * US
    occurrences = [store.positions(s) for s in definition.steps]
    rows = np.concatenate(occurrences)
    step_of = np.concatenate([np.full(len(o), i, np.int64) for i, o in enumerate(occurrences)])
    order = np.argsort(rows, kind="stable")
    rows, step_of = rows[order], step_of[order]
    in_range = (store.time[rows] >= t0) & (store.time[rows] < t1)
    learners, entry_pos = _first_per_learner(store, rows[in_range])
    # A start is dominated by the next step event when that is the same step of the same learner.
    dominated = np.zeros(len(rows), bool)
    if len(rows) > 1:
        same = (step_of[1:] == step_of[:-1]) & (store.learner[rows[1:]] == store.learner[rows[:-1]])
        dominated[:-1] = same & in_range[1:]
    starts = rows[in_range & ~dominated]
    ends = store.time[starts] + window
    start_learner = store.learner[starts]
    count = np.zeros(len(starts), np.int64)
    for occ in occurrences:
        if not len(occ):
            continue
        idx = np.searchsorted(occ, starts)
        idxc = np.minimum(idx, len(occ) - 1)
        hit = occ[idxc]
        count += (idx < len(occ)) & (store.learner[hit] == start_learner) & (store.time[hit] <= ends)
    best = np.zeros(len(learners), np.int64)
    np.maximum.at(best, np.searchsorted(learners, start_learner.astype(np.int64)), count)
    reached = np.arange(1, n + 1)[:, None] <= best[None, :]
    return LearnerFunnel(learners, entry_pos, reached, np.full((n, len(learners)), -1, np.int64))


KernelMatcher = tuple[int, int, tuple[tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]], ...]]


def _kernel_matchers(store: EventStore, definition: FunnelDefinition) -> list[KernelMatcher]:
    """Each distinct step or exclusion matcher as the kernel reads it: (event type code, bits,
    ((property column, sorted accepted codes), ...)); matchers of types never stored are left out."""
    bits: dict[EventMatcher, int] = {}
    for k, step in enumerate(definition.steps):
        key = EventMatcher(event=step.event, filters=step.filters)
        bits[key] = bits.get(key, 0) | 1 << k
    n = len(definition.steps)
    for ex in definition.exclusions:
        key = EventMatcher(event=ex.event, filters=ex.filters)
        # from_step..to_step (1-based) covers the transitions into 0-based steps from_step..to_step-1
        into = sum(1 << (EXCLUDED_BIT + k) for k in range(ex.from_step, min(ex.to_step, n)))
        bits[key] = bits.get(key, 0) | into
    out = []
    for matcher, b in bits.items():
        code = store.types.codes.get(matcher.event)
        if code is None:
            continue
        filters = tuple(
            (store.columns[f.property], np.sort(store.props[f.property].lookup(f.values)))
            for f in matcher.filters
        )
        out.append((code, b, filters))
    return out


def _compiled(kernel: ModuleType, store: EventStore, definition: FunnelDefinition) -> LearnerFunnel:
    """Any funnel in the compiled pass (``funnel_kernel.c``)."""
    t0, t1 = _us(definition)
    n, cap = len(definition.steps), max(store.learner_count, 1)
    columns = (_kernel_matchers(store, definition), store.offsets, store.time, store.columns["etype"])
    learners, entry_pos = np.empty(cap, np.int64), np.empty(cap, np.int64)
    if definition.order == "any":
        best = np.empty(cap, np.int64)
        count = kernel.any_order(*columns, n, definition.window_s * US, t0, t1, learners, entry_pos, best)
        reached = np.arange(1, n + 1)[:, None] <= best[None, :count]
        return LearnerFunnel(
            learners[:count], entry_pos[:count], reached, np.full(reached.shape, -1, np.int64)
        )
    within = np.array([-1 if s.within_s is None else s.within_s * US for s in definition.steps], np.int64)
    optional = sum(1 << k for k, s in enumerate(definition.steps) if s.optional)
    first = np.empty(n * cap, np.int64)
    strict = definition.order == "strict"
    window = definition.window_s * US
    count = kernel.ordered(*columns, within, optional, window, t0, t1, strict, learners, entry_pos, first)
    first_us = first.reshape(n, cap)[:, :count]
    reached = first_us != UNSET
    return LearnerFunnel(learners[:count], entry_pos[:count], reached, np.where(reached, first_us, -1))


def learner_funnel(
    store: EventStore, definition: FunnelDefinition, kernel: ModuleType | None = KERNEL
) -> LearnerFunnel:
    """Which steps every entering learner reached, and when it first did (``kernel=None``: the
    numpy engine, as without the compiled extension)."""
    if kernel is not None:
        return _compiled(kernel, store, definition)
    if definition.order == "any":
        return _any_order(store, definition)
    return _ordered(store, definition)
