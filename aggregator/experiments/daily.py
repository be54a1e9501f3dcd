"""The always-valid sequential result looked at day by day, from the exact per-day sums (pure: no I/O).

``experiment_variant_day_sums`` holds each day's change of the per-variant sums; their running total up to a
day is the sums as they stood at that day's end (``aggregator/consumer/experiments.py``). Each day is one
look: the mixture SPRT's p-value and confidence sequence at that look, and ``watched``, the running minimum
p-value and intersection of the sequences over the looks so far (:func:`.statistics.watch`), which stay
valid however often they are read. Small-cell suppression as in :mod:`.report`: a variant under k learners
at a look shows no count and that look no numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from . import statistics as st
from .definitions import ExperimentDefinition, metric_of
from .report import SumsRow, covariate_varies, mean_sums, plain, rate_sums

SUM_FIELDS = ("n", "successes", "sum", "sum_squares", "covariate_sum", "covariate_sum_squares", "cross_sum")


def running_totals(
    rows: Iterable[Mapping[str, Any]], variants: list[str]
) -> list[tuple[date, dict[str, SumsRow]]]:
    """Per day with a row, each variant's sums at that day's end (``rows``: one metric's day rows)."""
    by_day: dict[date, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["day"], []).append(row)
    totals: dict[str, dict[str, Any]] = {v: dict.fromkeys(SUM_FIELDS, 0) for v in variants}
    out: list[tuple[date, dict[str, SumsRow]]] = []
    for day in sorted(by_day):
        for row in by_day[day]:
            if row["variant"] in totals:
                for name in SUM_FIELDS:
                    totals[row["variant"]][name] += row[name]
        out.append((day, {v: dict(t) for v, t in totals.items()}))
    return out


def daily_looks(
    definition: ExperimentDefinition,
    metric: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    k: int = st.DEFAULT_MIN_LEARNERS,
    alpha: float = st.DEFAULT_ALPHA,
) -> list[dict[str, Any]]:
    """One entry per day: learners per variant and, per treatment, the look's and the watched result."""
    info, names = metric_of(metric), definition.names
    looks: dict[str, list[st.SequentialResult]] = {n: [] for n in names[1:]}
    out = []
    for day, sums in running_totals(rows, names):
        raw: list[SumsRow | None] = [sums[n] for n in names]
        counts = [int(r["n"]) if r is not None else 0 for r in raw]
        comparisons = []
        for index, name in enumerate(names[1:], start=1):
            if info.kind == "rate":
                control, treatment = rate_sums(raw[0]), rate_sums(raw[index])
                look = st.sequential_rates(control, treatment, alpha=alpha, min_learners=k)
            else:
                cuped = covariate_varies(raw)
                means = [mean_sums(r, info.scale, cuped) for r in raw]
                look = st.sequential_means(means[0], means[index], alpha=alpha, cuped=cuped, min_learners=k)
            looks[name].append(look)
            comparisons.append(
                {"variant": name, "sequential": plain(look), "watched": plain(st.watch(looks[name]))}
            )
        out.append(
            {
                "day": day.isoformat(),
                "learners": {n: (c if not (0 < c < k) else None) for n, c in zip(names, counts, strict=True)},
                "comparisons": comparisons,
            }
        )
    return out
