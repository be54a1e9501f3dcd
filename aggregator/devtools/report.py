"""The demo's printout: what the query API and the rollups say, each figure checked against the truth.

Every learner's overview and progress is compared (not only the rows shown); every number printed
is one that was compared. Study minutes are compared to the precision the API gives them (per day,
rounded to thousandths of a minute); percentiles to the DDSketch estimate of the true latencies.
The staff views are checked too: each pathway's funnel (every step's learners; a hidden step must
be one the small-group rule hides, docs/analytics.md) and the experiment's learners and metric
means per variant, with the primary metric's relative lift.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...instrumentation.privacy import Pseudonymizer
from ..consumer import histogram
from . import experiment, pathway
from .history import HistoryLedger, LearnerState

SHOWN_LEARNERS = 12
MINUTES_TOLERANCE = 0.002
"""Study minutes: the API sums per-day figures rounded to 0.001 min; float sums may differ by ulps."""


def _truth(ledger: HistoryLedger, user: str, since: date, today: date) -> dict[str, Any]:
    state = ledger.learners.get(user, LearnerState())
    current = (
        state.streak if state.streak_day is not None and state.streak_day >= today - timedelta(days=1) else 0
    )
    return {
        "sessions": ledger.sessions.get(user, 0),
        "study_minutes": ledger.study_minutes(user, since),
        "materials_viewed": ledger.materials_viewed.get(user, 0),
        "materials_completed": ledger.materials_completed.get(user, 0),
        "xp": ledger.xp.get(user, 0),
        "level": state.level,
        "achievements": len(state.achievements),
        "streak": current,
        "longest": state.longest,
        "active_7d": any(u == user and d > today - timedelta(days=7) for u, d in ledger.study_seconds),
    }


def _answer(overview: dict[str, Any], progress: dict[str, Any], today: date) -> dict[str, Any]:
    return {
        "sessions": overview["sessions"],
        "study_minutes": overview["study_minutes"],
        "materials_viewed": overview["materials_viewed"],
        "materials_completed": overview["materials_completed"],
        "xp": progress["xp_total"],
        "level": progress["level"],
        "achievements": len(progress["achievements"]),
        "streak": progress["streaks"]["current"],
        "longest": progress["streaks"]["longest"],
        "active_7d": any(
            date.fromisoformat(d["day"]) > today - timedelta(days=7) and d["sessions"]
            for d in overview["daily"]
        ),
    }


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    for key, value in want.items():
        if key == "study_minutes":
            if abs(got[key] - value) > MINUTES_TOLERANCE:
                return False
        elif got[key] != value:
            return False
    return True


def print_report(
    console: Console,
    ledger: HistoryLedger,
    user_ids: list[str],
    days: int,
    answers: dict[str, Any],
    pseudonymizer: Pseudonymizer,
    span: tuple[datetime, datetime],
) -> bool:
    """Print the learners, the cohort, the routes, the pathways' funnels and the experiment;
    ``True`` when every figure matches."""
    today = datetime.now(UTC).date()
    since = today - timedelta(days=days)
    rows = []
    for user in user_ids:
        got = _answer(answers["overviews"][user], answers["progress"][user], today)
        want = _truth(ledger, user, since, today)
        rows.append((user, got, want, _same(got, want)))
    learners_ok = all(ok for *_, ok in rows)
    _learner_table(console, rows, pseudonymizer, days)
    cohort_ok = _cohort_table(console, rows)
    routes_ok = _route_table(console, ledger, answers["routes"])
    funnels_ok = all(
        [
            _funnel_table(console, ledger, course, answers["funnels"][name], span)
            for name, course in pathway.PATHWAYS.items()
        ]
    )
    experiment_ok = _experiment_table(console, ledger, answers["experiment"])
    console.print(
        f"learners checked: {sum(ok for *_, ok in rows)}/{len(rows)} match the simulation "
        f"(all {len(rows)} compared, {min(SHOWN_LEARNERS, len(rows))} shown)"
    )
    return learners_ok and cohort_ok and routes_ok and funnels_ok and experiment_ok


def _mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"


def _learner_table(console: Console, rows: list[Any], pseudonymizer: Pseudonymizer, days: int) -> None:
    shown = sorted(rows, key=lambda r: -r[2]["xp"])[: SHOWN_LEARNERS - 4]
    shown += [r for r in rows if not r[2]["active_7d"] and r not in shown][:4]  # drop-outs, too
    table = Table(title=f"Learners (last {days} days; top by XP, then some who stopped), from the query API")
    columns = ("learner (pseudonym)", "sessions", "study min", "viewed", "completed", "XP", "level", "streak",
               "longest", "badges", "last 7 d", "truth")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column.startswith("learner") else "right")
    for user, got, _want, ok in shown:
        table.add_row(
            pseudonymizer.pseudonymize(user)[:18] + "…",
            str(got["sessions"]),
            f"{got['study_minutes']:.1f}",
            str(got["materials_viewed"]),
            str(got["materials_completed"]),
            str(got["xp"]),
            str(got["level"]),
            str(got["streak"]),
            str(got["longest"]),
            str(got["achievements"]),
            "yes" if got["active_7d"] else "no",
            _mark(ok),
        )
    console.print(table)


def _cohort_table(console: Console, rows: list[Any]) -> bool:
    table = Table(title="The cohort (sums over every learner's answers)")
    for column in ("figure", "API", "simulation", "truth"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    figures = (
        ("learners who studied", lambda v: int(v["sessions"] > 0)),
        ("active in the last 7 days", lambda v: int(v["active_7d"])),
        ("sessions", lambda v: v["sessions"]),
        ("study hours", lambda v: v["study_minutes"] / 60),
        ("materials completed", lambda v: v["materials_completed"]),
        ("XP", lambda v: v["xp"]),
        ("achievements unlocked", lambda v: v["achievements"]),
        ("learners on a streak today", lambda v: int(v["streak"] > 0)),
    )
    all_ok = True
    for name, pick in figures:
        got = sum(pick(g) for _u, g, _w, _ok in rows)
        want = sum(pick(w) for _u, _g, w, _ok in rows)
        ok = (
            math.isclose(got, want, abs_tol=MINUTES_TOLERANCE * len(rows) / 60)
            if name == "study hours"
            else got == want
        )
        all_ok &= ok
        shown = "{:,.1f}" if name == "study hours" else "{:,}"
        table.add_row(name, shown.format(got), shown.format(want), _mark(ok))
    console.print(table)
    return all_ok


def _route_table(console: Console, ledger: HistoryLedger, routes: list[dict[str, Any]]) -> bool:
    table = Table(title="API routes over the whole history (hourly route rollup; DDSketch percentiles)")
    for column in ("route", "method", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "truth"):
        table.add_column(column, justify="left" if column in ("route", "method") else "right")
    all_ok = {(r["route"], r["method"]) for r in routes} == set(ledger.routes)
    for r in routes:
        truth = ledger.routes.get((r["route"], r["method"]))
        ok = truth is not None and (r["requests"], r["errors"]) == (truth.requests, truth.errors)
        for q in ("p50", "p95", "p99"):
            want = None if truth is None else histogram.quantile(truth.latency_hist, int(q[1:]) / 100)
            ok = ok and want is not None and math.isclose(r[q], want, rel_tol=1e-9)
        all_ok &= ok
        table.add_row(
            Text(str(r["route"])),  # data: no markup, no emoji codes
            str(r["method"]),
            f"{r['requests']:,}",
            f"{r['errors']:,}",
            f"{r['p50']:.1f}",
            f"{r['p95']:.1f}",
            f"{r['p99']:.1f}",
            _mark(ok),
        )
    console.print(table)
    return all_ok


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _funnel_table(
    console: Console,
    ledger: HistoryLedger,
    course: pathway.Pathway,
    result: dict[str, Any],
    span: tuple[datetime, datetime],
) -> bool:
    """One pathway's saved funnel as the API answers it, each step against the simulation."""
    labels = [f"view {course.modules[0][0]}", *(f"complete {m}" for m, _ in course.modules)]
    events = list(ledger.pathway_events.get(course.name, {}).values())
    want = pathway.funnel_truth(events, len(labels), _us(span[0]), _us(span[1]))
    k = int(result["min_group_size"])
    steps = result["groups"][0]["steps"] if result["groups"] else []
    got = [s["learners"] for s in steps] if steps else [0] * len(labels)
    table = Table(
        title=f"Pathway {course.name}: saved funnel, {pathway.FUNNEL_WINDOW_S // 86_400}-day window"
    )
    for column in ("step", "learners", "simulation", "of entering", "truth"):
        table.add_column(column, justify="left" if column == "step" else "right")
    all_ok = len(got) == len(labels)
    last_shown: int | None = None
    for index, (label, n) in enumerate(zip(labels, got, strict=False)):
        if n is None:  # hidden: a small entering count hides the row; else a small count or difference
            row_hidden = got[0] is None and 0 < want[0] < k
            ok = (
                row_hidden
                or 0 < want[index] < k
                or (last_shown is not None and 0 < last_shown - want[index] < k)
            )
        else:
            ok = n == want[index]
            last_shown = want[index]
        all_ok &= ok
        share = "–" if n is None or not want[0] else f"{100 * n / want[0]:.0f} %"
        table.add_row(label, "hidden" if n is None else f"{n:,}", f"{want[index]:,}", share, _mark(ok))
    if any(n is None for n in got):
        table.caption = (
            f"hidden: fewer than k = {k} learners, or fewer than k dropping off since the step before "
            "(the count would reveal them): docs/analytics.md#small-groups"
        )
    console.print(table)
    return all_ok


def _experiment_table(console: Console, ledger: HistoryLedger, analysis: dict[str, Any]) -> bool:
    """The experiment's learners and metric means per variant, and the primary metric's lift."""
    want = experiment.truth(ledger.variants, ledger.xp, ledger.sessions, _seconds_by_learner(ledger))
    metrics = {m["metric"]: m for m in analysis["metrics"]}
    k = int(analysis["min_learners"])
    table = Table(title=f"Experiment {experiment.KEY}: per variant, API / simulation")
    for column in ("variant", "learners", *experiment.METRICS, "truth"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    all_ok = True
    for index, row in enumerate(analysis["variants"]):
        truth = want[row["variant"]]
        ok = row["learners"] == truth.learners or (row["learners"] is None and 0 < truth.learners < k)
        cells = [f"{_show(row['learners'], '{:,}')} / {truth.learners:,}"]
        for name in experiment.METRICS:
            mean = metrics[name]["variants"][index]["mean"]
            tolerance = MINUTES_TOLERANCE if name == "study_minutes" else 1e-9
            ok &= (mean is None and truth.learners < k) or (
                mean is not None and math.isclose(mean, truth.means[name], rel_tol=1e-9, abs_tol=tolerance)
            )
            cells.append(f"{_show(mean, '{:,.2f}')} / {truth.means[name]:,.2f}")
        all_ok &= ok
        table.add_row(Text(str(row["variant"])), *cells, _mark(ok))
    console.print(table)
    primary = metrics[experiment.METRICS[0]]["comparisons"][0]["comparison"]["relative_lift"]
    control, treatment = (
        want[v].means[experiment.METRICS[0]] for v in (experiment.CONTROL, experiment.TREATMENT)
    )
    expected = treatment / control - 1 if control else None
    lift_ok = (
        (primary is None and expected is None)
        or (
            primary is not None
            and expected is not None
            and math.isclose(primary, expected, rel_tol=1e-6, abs_tol=1e-9)
        )
        or (primary is None and min(want[v].learners for v in want) < k)
    )
    console.print(
        f"{experiment.KEY}: {experiment.METRICS[0]} lift of {experiment.TREATMENT} over "
        f"{experiment.CONTROL}: {_show(primary, '{:+.1%}')} "
        f"(simulation {_show(expected, '{:+.1%}')}) {_mark(lift_ok)}"
    )
    return all_ok and lift_ok


def _show(value: float | None, spec: str) -> str:
    return "hidden" if value is None else spec.format(value)


def _seconds_by_learner(ledger: HistoryLedger) -> dict[str, float]:
    out: dict[str, float] = {}
    for (user, _day), seconds in ledger.study_seconds.items():
        out[user] = out.get(user, 0.0) + seconds
    return out
