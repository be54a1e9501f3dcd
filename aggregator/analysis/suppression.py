"""Small-group suppression: which counts may leave, given k.

A count is *small* when it is between 1 and k - 1: it singles out fewer than k learners (0
singles out nobody). Rules (docs/analytics.md, "Small groups"):

* **funnel rows** (one per group): the entering count must not be small, else the whole row
  is hidden. Step by step, a count is shown only if neither it nor its difference with the
  last shown count of an earlier required step is small: required steps' learners are nested
  (reaching step 4 means having reached step 3), so every difference of two shown counts in a
  row is then 0 or at least k (it is a sum of shown consecutive differences);
* **funnel columns** (breakdowns): groups partition the entering learners, so the overall
  count minus the shown group counts is the sum of the hidden group counts; while that is
  small, the smallest shown group count of the column is hidden too (or, with none left, the
  overall count). Rows and columns are re-checked until nothing changes;
* **retention rows**: the cohort size must not be small; a cell is shown only if neither it
  nor the size minus it (who did not come back) is small.

Every figure derived from a hidden count (conversion, drop-off, times, metric) is hidden with it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Counts = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


def small(value: int | np.integer, k: int) -> bool:
    return 0 < int(value) < k


def _row(counts: Counts, shown: Mask, required: list[bool], k: int) -> bool:
    """Apply the row rule to one row in place; True if something was hidden."""
    changed = False
    if small(counts[0], k) or not shown[0]:
        changed = bool(shown.any())
        shown[:] = False
        return changed
    last = int(counts[0])
    for s in range(1, len(counts)):
        if shown[s] and (small(counts[s], k) or small(last - int(counts[s]), k)):
            shown[s] = False
            changed = True
        if shown[s] and required[s]:
            last = int(counts[s])
    return changed


def funnel_shown(overall: Counts, groups: Counts, required: list[bool], k: int) -> tuple[Mask, Mask]:
    """Masks of the counts that may be shown: ``overall`` (steps,), ``groups`` (groups, steps)."""
    shown_all = np.ones(len(overall), bool)
    shown_groups = np.ones(groups.shape, bool)
    changed = True
    while changed:
        changed = _row(overall, shown_all, required, k)
        for g in range(groups.shape[0]):
            changed |= _row(groups[g], shown_groups[g], required, k)
        if groups.shape[0] == 0:
            break
        for s in range(len(overall)):
            while shown_all[s]:
                hidden = int(overall[s]) - int(groups[shown_groups[:, s], s].sum())
                if not small(hidden, k):
                    break
                candidates = np.flatnonzero(shown_groups[:, s])
                if len(candidates):
                    smallest = candidates[np.argmin(groups[candidates, s])]
                    shown_groups[smallest, s] = False
                else:
                    shown_all[s] = False
                changed = True
    return shown_all, shown_groups


def retention_shown(sizes: Counts, retained: Counts, k: int) -> Mask:
    """Mask of the retention cells (cohorts, periods + 1) that may be shown; column 0 is the size."""
    shown = np.ones(retained.shape, bool)
    for c, size in enumerate(sizes):
        if small(size, k):
            shown[c, :] = False
            continue
        for n in range(1, retained.shape[1]):
            cell = int(retained[c, n])
            shown[c, n] = not small(cell, k) and not small(int(size) - cell, k)
    return shown
