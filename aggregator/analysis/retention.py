"""Cohort retention over the event-sequence store: exact counts per cohort and period.

A learner's cohort memberships and return periods are (learner, period) pairs; a cell is one
set intersection. First-time: a learner's cohort is the period of its first start event (by
default its first learning event at all). Recurring: every period with a start event is a
cohort the learner belongs to. Cell ``n`` of cohort ``c`` counts the cohort's learners with a
return event in period ``c + n``; cell 0 is the cohort's size. Definitions: docs/analytics.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from types import ModuleType

import numpy as np
import numpy.typing as npt

from . import kernels
from .definitions import RetentionDefinition
from .periods import US, offset_table, period_number, period_start, periods
from .store import I64, NEVER, EventStore

F = np.float64
B = npt.NDArray[np.bool_]


@dataclass
class RetentionCounts:
    cohort_periods: list[int]
    sizes: I64
    """(cohorts,)"""
    retained: I64
    """(cohorts, periods + 1); column 0 = sizes"""
    metric_sum: np.ndarray
    """(cohorts, periods + 1) sum of the metric over the retained learners (zeros without a metric)"""


def _start_rows(store: EventStore, definition: RetentionDefinition) -> I64:
    if definition.start_event is None:
        return np.arange(len(store), dtype=np.int64)
    return store.positions(definition.start_event)


def _return_rows(store: EventStore, definition: RetentionDefinition) -> I64:
    ret = definition.return_event
    if ret.kind == "any_activity":
        return np.arange(len(store), dtype=np.int64)
    if ret.kind == "event":
        assert ret.matcher is not None
        return store.positions(ret.matcher)
    code = store.types.codes.get("material_complete" if ret.kind == "material_complete" else "session_end")
    if code is None:
        return np.empty(0, np.int64)
    rows = np.flatnonzero(store.columns["etype"] == code).astype(np.int64)
    if ret.kind == "session":
        rows = rows[_first_session_ends(store, rows)]
        rows = rows[store.columns["duration_s"][rows] >= np.float32(ret.min_session_minutes * 60)]
    return rows


def _first_session_ends(store: EventStore, rows: I64) -> np.ndarray:
    """Mask of the ``session_end`` rows that are their session's first (by row order), or have no session."""
    session = store.columns["session_id"][rows].astype(np.int64)
    key = store.learner[rows].astype(np.int64) * (len(store.props["session_id"].values) + 1) + session
    first = np.zeros(len(rows), bool)
    _, index = np.unique(key, return_index=True)
    first[index] = True
    return first | (session < 0)


def _metric_rows(store: EventStore, definition: RetentionDefinition) -> tuple[I64, np.ndarray]:
    """Rows carrying the metric, and their values: XP of ``xp_awarded``, or minutes of each
    session's first end."""
    name = "xp_awarded" if definition.metric == "xp" else "session_end"
    code = store.types.codes.get(name)
    if code is None:
        return np.empty(0, np.int64), np.empty(0, F)
    rows = np.flatnonzero(store.columns["etype"] == code).astype(np.int64)
    if definition.metric == "xp":
        return rows, store.columns["xp"][rows].astype(F)
    rows = rows[_first_session_ends(store, rows)]
    return rows, store.columns["duration_s"][rows].astype(F) / 60.0


def _near(store: EventStore, rows: I64, definition: RetentionDefinition, first: int, span: int) -> I64:
    """``rows`` within two days of the table's periods (a cheap cut before the time-zone arithmetic)."""
    lo = datetime.combine(period_start(first, definition.period), time(), UTC) - timedelta(days=2)
    hi = datetime.combine(period_start(first + span, definition.period), time(), UTC) + timedelta(days=2)
    t = store.time[rows]
    return rows[(t >= int(lo.timestamp()) * US) & (t < int(hi.timestamp()) * US)]


def _keys(
    store: EventStore, rows: I64, definition: RetentionDefinition, first: int, span: int
) -> tuple[I64, I64]:
    """(learner * span + period relative to the first cohort, or -1 outside the table; the rows kept)"""
    rows = _near(store, rows, definition, first, span)
    period = periods(store.time[rows], definition.period, definition.timezone) - first
    keys = store.learner[rows].astype(np.int64) * span + period
    return np.where((period >= 0) & (period < span), keys, -1), rows


def _cells(store: EventStore, rows: I64, definition: RetentionDefinition, first: int, span: int) -> B:
    """(learners x span) cells: learner l has one of ``rows`` in period ``first + p``."""
    keys, _ = _keys(store, rows, definition, first, span)
    cells = np.zeros(store.learner_count * span, bool)
    cells[keys[keys >= 0]] = True
    return cells


def _activity_cells(
    store: EventStore, definition: RetentionDefinition, first: int, span: int, kernel: ModuleType | None
) -> B:
    """``_cells`` of every row (any activity), in the compiled pass when it is built (retention_kernel.c;
    a whole 12-week table over 10M rows: 203 ms with numpy here, 37 ms compiled)."""
    if kernel is None or not len(store):
        return _cells(store, np.arange(len(store), dtype=np.int64), definition, first, span)
    firsts, lasts = store.offsets[:-1], store.offsets[1:] - 1
    some = firsts <= lasts
    lo, hi = int(store.time[firsts[some]].min()), int(store.time[lasts[some]].max())
    starts, shift = offset_table(definition.timezone, lo, hi)
    cells = np.zeros(store.learner_count * span, np.uint8)
    kind = ("day", "week", "month").index(definition.period)
    kernel.mark(store.offsets, store.time, starts, shift, kind, first, span, cells)
    return cells.view(bool)


def _members(store: EventStore, definition: RetentionDefinition, first: int, span: int) -> B:
    """(learners x span) cells: learner l is in cohort ``first + p`` (only p < cohorts are read)."""
    if definition.mode == "first_time" and definition.start_event is None:
        # First activity: the first row, or the first learning event ever when raw retention
        # dropped it (``analysis_learners``), over every pseudonym of the learner.
        first_times = store.first_time()
        learners = np.flatnonzero(first_times != NEVER).astype(np.int64)
        start_times = first_times[learners]
    else:
        if definition.mode == "first_time":
            starts = _start_rows(store, definition)
            starts = starts[np.unique(store.learner[starts], return_index=True)[1]]
        else:
            starts = _near(store, _start_rows(store, definition), definition, first, span)
        learners, start_times = store.learner[starts].astype(np.int64), store.time[starts]
    start_period = periods(start_times, definition.period, definition.timezone) - first
    in_range = (start_period >= 0) & (start_period < definition.cohorts)
    member = np.zeros(store.learner_count * span, bool)
    member[learners[in_range] * span + start_period[in_range]] = True
    return member


def retention_counts(
    store: EventStore, definition: RetentionDefinition, kernel: ModuleType | None = kernels.RETENTION
) -> RetentionCounts:
    """Cohort sizes, retained learners and metric sums (``kernel=None``: numpy only, as without the
    compiled extension)."""
    first = period_number(definition.start, definition.period)
    cohort_ids = list(range(first, first + definition.cohorts))
    span = definition.cohorts + definition.periods + 1
    cells = store.learner_count * span
    any_start = definition.start_event is None and definition.mode == "recurring"
    activity = (
        _activity_cells(store, definition, first, span, kernel)
        if any_start or definition.return_event.kind == "any_activity"
        else None
    )
    # Dense (learner, period) tables: learners x (cohorts + periods + 1) cells, no sort needed.
    member = activity if any_start and activity is not None else _members(store, definition, first, span)
    if activity is not None and definition.return_event.kind == "any_activity":
        returned = activity
    else:
        returned = _cells(store, _return_rows(store, definition), definition, first, span)
    value = np.zeros(cells, F)
    if definition.metric is not None:
        rows, values = _metric_rows(store, definition)
        near = np.isin(rows, _near(store, rows, definition, first, span), assume_unique=True)
        keys, _ = _keys(store, rows[near], definition, first, span)
        value = np.bincount(keys[keys >= 0], weights=values[near][keys >= 0], minlength=cells).astype(F)
    cohorts = definition.cohorts
    member2 = member.reshape(-1, span)[:, :cohorts]
    returned2, value2 = returned.reshape(-1, span), value.reshape(-1, span)
    sizes = member2.sum(axis=0).astype(np.int64)
    retained = np.zeros((cohorts, definition.periods + 1), np.int64)
    metric_sum = np.zeros((cohorts, definition.periods + 1), F)
    retained[:, 0] = sizes
    for n in range(1, definition.periods + 1):
        hit = member2 & returned2[:, n : n + cohorts]
        retained[:, n] = hit.sum(axis=0)
        if definition.metric is not None:
            metric_sum[:, n] = np.where(hit, value2[:, n : n + cohorts], 0.0).sum(axis=0)
    return RetentionCounts(cohort_ids, sizes, retained, metric_sum)
