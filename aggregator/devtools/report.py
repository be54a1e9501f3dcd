"""The demo's printout: what the query API and the rollups say, each figure checked against the truth.

Every learner's overview and progress is compared (not only the rows shown); every number printed
is one that was compared. Study minutes are compared to the precision the API gives them (per day,
rounded to thousandths of a minute); percentiles to the DDSketch estimate of the true latencies.
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
) -> bool:
    """Print the learners, the cohort and the routes; ``True`` when every figure matches."""
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
    console.print(
        f"learners checked: {sum(ok for *_, ok in rows)}/{len(rows)} match the simulation "
        f"(all {len(rows)} compared, {min(SHOWN_LEARNERS, len(rows))} shown)"
    )
    return learners_ok and cohort_ok and routes_ok


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
