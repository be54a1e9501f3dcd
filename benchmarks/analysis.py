"""Funnels and retention: p95 of the in-memory engine against straightforward SQL on the same data.

Data: learner paths (numpy-generated, seeded), 10M learning events of 10k learners over 90 days
(quick: 100k of 500). A learner has sessions (how many: heavy-tailed, most learners few, some
many, gaps of hours to weeks); a session starts, views a material, then progresses (60 %),
completes (50 % of those), earns XP (70 %), asks the coach (25 %) and ends: most learners do not
convert and drop-off differs per step. Rows go by ``COPY`` into ``analytics_events``.

Measured (each a p95 over ``QUERIES`` runs per repeat, median over repeats): a 5-step ordered
funnel over 30 days, a 20-step one (four sessions' pathway), a 12-week retention table (weekly
first-time cohorts, any activity), and an any-order 5-step funnel; also the 20-step funnel's
engine alone (``learner_funnel``), the compiled single pass against the numpy engine it falls
back to. Baseline: the same question as straightforward SQL over the raw table (chained CTEs,
one join per step; ``GROUP BY`` for retention), timed once in the same run (it takes seconds to
minutes; cut at ``SQL_TIMEOUT_S``, which then makes the ratio a lower bound). The full run needs
``--timeout 1800`` (loading 10M events alone takes minutes). Also reported: the store's load
time and size.

Run alone: ``studyin-analytics bench --only analysis [--quick]``.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from ..aggregator.analysis.definitions import FunnelDefinition, FunnelStep, RetentionDefinition
from ..aggregator.analysis.funnels import KERNEL, learner_funnel
from ..aggregator.analysis.loader import AnalysisStore
from ..aggregator.analysis.reports import funnel_report, retention_report
from ..aggregator.analysis.store import EventStore
from ..aggregator.storage.db import connect
from ..aggregator.storage.schema import ensure_partitions
from .framework import BenchContext, Measurement, bench, median

FULL_EVENTS, QUICK_EVENTS = 10_000_000, 100_000
FULL_USERS, QUICK_USERS = 10_000, 500
DAYS = 90
QUERIES, QUICK_QUERIES = 20, 5
SQL_TIMEOUT_S, QUICK_SQL_TIMEOUT_S = 90, 10
SEED = 20261203
TARGET_MS = 500.0
COMPILED, FALLBACK = "20-step engine alone, compiled single pass", "20-step engine alone, numpy fallback"
PATHWAY = ("session_start", "material_view", "material_progress", "material_complete", "xp_awarded")
MATERIAL_TYPES = ("video", "quiz", "flashcards", "case")


def _sessions(rng: np.random.Generator, events: int, users: int) -> tuple[np.ndarray, np.ndarray]:
    """(learner, start time in s) of each session, heavy-tailed per learner."""
    per_session = 4.3  # expected events per session of the template below
    weights = rng.pareto(1.2, users) + 0.05
    sessions = int(events / per_session)
    learner = rng.choice(users, size=sessions, p=weights / weights.sum())
    now = int(datetime.now(UTC).timestamp())
    first = now - DAYS * 86_400 + (rng.random(users) ** 2 * DAYS * 86_400).astype(np.int64)
    start = first[learner] + (rng.random(sessions) * (now - first[learner]) * 0.98).astype(np.int64)
    return learner, start


def generate(events: int, users: int, seed: int = SEED) -> tuple[list[str], dict[str, np.ndarray]]:
    """Columns of about ``events`` learning events (types as indexes into the returned names)."""
    rng = np.random.default_rng(seed)
    learner, start = _sessions(rng, events, users)
    n = len(learner)
    progress = rng.random(n) < 0.6
    complete = progress & (rng.random(n) < 0.5)
    xp = complete & (rng.random(n) < 0.7)
    coach = rng.random(n) < 0.25
    names = [*PATHWAY, "ai_coach_interaction", "session_end"]
    parts = []
    offset = np.zeros(n, np.int64)
    for code, mask in enumerate(
        (np.ones(n, bool), np.ones(n, bool), progress, complete, xp, coach, np.ones(n, bool))
    ):
        offset = offset + rng.integers(1, 400, n)
        idx = np.flatnonzero(mask)
        parts.append((idx, np.full(len(idx), code, np.int8), start[idx] + offset[idx]))
    idx = np.concatenate([p[0] for p in parts])
    return names, {
        "learner": learner[idx],
        "type": np.concatenate([p[1] for p in parts]),
        "time": np.concatenate([p[2] for p in parts]),
        "material": rng.integers(0, len(MATERIAL_TYPES), len(idx)),
    }


async def load(ctx: BenchContext, conn: asyncpg.Connection, events: int, users: int) -> int:
    names, cols = generate(events, users)
    hashes = [f"bench:{u:032x}" for u in range(users)]
    times = cols["time"]
    days = {datetime.fromtimestamp(int(t), UTC).date() for t in np.unique(times // 86_400 * 86_400)}
    await ensure_partitions(conn, days, set())
    total = len(times)
    chunk = 200_000
    async with ctx.task(f"COPY {total:,} learning events", total=total) as task:
        for lo in range(0, total, chunk):
            hi = min(lo + chunk, total)
            lines = []
            for i in range(lo, hi):
                kind = names[cols["type"][i]]
                props = (
                    f'{{"material_type": "{MATERIAL_TYPES[cols["material"][i]]}"}}'
                    if kind.startswith("material")
                    else "{}"
                )
                stamp = datetime.fromtimestamp(int(times[i]), UTC).strftime("%Y-%m-%d %H:%M:%S+00")
                lines.append(f"{i:032x}\t{stamp}\t{kind}\t{hashes[cols['learner'][i]]}\t{props}\n")
            await conn.copy_to_table(
                "analytics_events",
                source=io.BytesIO("".join(lines).encode()),
                columns=["event_id", "occurred_at", "event_type", "user_hash", "properties"],
                format="text",
            )
            ctx.advance(task, hi - lo)
    await conn.execute("ANALYZE analytics_events")
    return total


def funnel_sql(steps: Sequence[str], window_s: int) -> str:
    """The straightforward SQL: each step's earliest event after the previous one, per entering event."""
    ctes = [
        "s1 AS (SELECT user_hash, occurred_at AS t0, occurred_at AS t FROM analytics_events "
        f"WHERE event_type = '{steps[0]}' AND occurred_at >= $1 AND occurred_at < $2)"
    ]
    for k, step in enumerate(steps[1:], start=2):
        ctes.append(
            f"s{k} AS (SELECT p.user_hash, p.t0, min(e.occurred_at) AS t FROM s{k - 1} p "
            f"JOIN analytics_events e ON e.user_hash = p.user_hash AND e.event_type = '{step}' "
            f"AND e.occurred_at > p.t AND e.occurred_at <= p.t0 + interval '{window_s} seconds' "
            "GROUP BY p.user_hash, p.t0)"
        )
    counts = ", ".join(f"(SELECT count(DISTINCT user_hash) FROM s{k})" for k in range(1, len(steps) + 1))
    return f"WITH {', '.join(ctes)} SELECT {counts}"


RETENTION_SQL = """
WITH firsts AS (
    SELECT user_hash, date_trunc('week', min(occurred_at) AT TIME ZONE 'UTC') AS cohort
    FROM analytics_events WHERE user_hash IS NOT NULL AND event_type <> 'api_request' GROUP BY 1
), active AS (
    SELECT DISTINCT user_hash, date_trunc('week', occurred_at AT TIME ZONE 'UTC') AS week
    FROM analytics_events WHERE user_hash IS NOT NULL AND event_type <> 'api_request'
)
SELECT f.cohort, (a.week::date - f.cohort::date) / 7 AS n, count(*)
FROM firsts f JOIN active a USING (user_hash)
WHERE f.cohort >= $1 AND a.week >= f.cohort AND a.week <= f.cohort + interval '12 weeks'
GROUP BY 1, 2
"""


def p95(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


async def _sql_ms(conn: asyncpg.Connection, query: str, *args: object) -> tuple[float, bool]:
    """Milliseconds of one run, and whether it finished before the timeout."""
    t0 = time.perf_counter()
    try:
        await conn.fetch(query, *args)
    except asyncpg.QueryCanceledError:
        return (time.perf_counter() - t0) * 1000, False
    return (time.perf_counter() - t0) * 1000, True


def _engine_p95(run: Callable[[], object], count: int) -> float:
    run()  # warm-up (type index built once per store version)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1000)
    return p95(samples)


@bench("analysis")
async def analysis(ctx: BenchContext) -> list[Measurement]:
    """Funnels and retention: the in-memory engine against straightforward SQL."""
    settings = await ctx.migrated_settings("analysis")
    events, users = ctx.scale(FULL_EVENTS, QUICK_EVENTS), ctx.scale(FULL_USERS, QUICK_USERS)
    admin = await connect(settings)
    api = await connect(settings, "api")
    holder = AnalysisStore()
    try:
        loaded = await load(ctx, admin, events, users)
        t0 = time.perf_counter()
        await holder.refresh(api, force=True)
        load_s = time.perf_counter() - t0
        cut = ctx.scale(SQL_TIMEOUT_S, QUICK_SQL_TIMEOUT_S)
        await admin.execute(f"SET statement_timeout = '{cut}s'")
        rows = await _measure(ctx, admin, holder, settings.min_cohort_size, settings.analysis_breakdown_limit)
    finally:
        await api.close()
        await admin.close()
    rows.append(
        Measurement(
            name="analysis store load",
            value=loaded / load_s,
            unit="events/s",
            headline=False,
            notes=(
                f"{loaded:,} events of {users:,} learners in {load_s:.1f}s; "
                f"{holder.store.nbytes() / 2**20:.0f} MiB"
            ),
        )
    )
    return rows


Case = tuple[str, Callable[[], object], Callable[[], Awaitable[tuple[float, bool]]] | None]
"""(name, the engine's run, its SQL baseline's run or None)."""


def _cases(store: EventStore, admin: asyncpg.Connection, k: int, limit: int) -> list[Case]:
    now = datetime.now(UTC)
    month = now - timedelta(days=30)
    five = FunnelDefinition(steps=tuple(FunnelStep(event=e) for e in PATHWAY), start=month, end=now)
    twenty_steps = [*PATHWAY, "session_end"] * 3 + ["session_start", "material_view"]
    twenty = FunnelDefinition(steps=tuple(FunnelStep(event=e) for e in twenty_steps), start=month, end=now)
    anyorder = five.model_copy(update={"order": "any"})
    first_week = (now - timedelta(weeks=12)).date()
    retention = RetentionDefinition(start=first_week, cohorts=12, periods=12, period="week")
    return [
        (
            "5-step ordered funnel, 30 days",
            lambda: funnel_report(store, five, k, limit),
            lambda: _sql_ms(admin, funnel_sql(PATHWAY, five.window_s), month, now),
        ),
        (
            "20-step ordered funnel, 30 days",
            lambda: funnel_report(store, twenty, k, limit),
            lambda: _sql_ms(admin, funnel_sql(twenty_steps, twenty.window_s), month, now),
        ),
        (
            "12-week retention, weekly cohorts",
            lambda: retention_report(store, retention, k),
            lambda: _sql_ms(admin, RETENTION_SQL, datetime.combine(first_week, datetime.min.time())),
        ),
        ("5-step any-order funnel, 30 days", lambda: funnel_report(store, anyorder, k, limit), None),
        (COMPILED, lambda: learner_funnel(store, twenty), None),
        (FALLBACK, lambda: learner_funnel(store, twenty, kernel=None), None),
    ]


async def _measure(
    ctx: BenchContext, admin: asyncpg.Connection, holder: AnalysisStore, k: int, limit: int
) -> list[Measurement]:
    store = holder.store
    count = ctx.scale(QUERIES, QUICK_QUERIES)
    cases = _cases(store, admin, k, limit)
    values: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    baselines: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    finished: dict[str, bool] = {name: True for name, _, _ in cases}
    async with ctx.task(
        "timing funnels, retention and their SQL", total=(ctx.repeat_count + 1) * len(cases)
    ) as task:
        # The SQL baseline once per query (seconds to minutes each), the engine per repeat.
        for name, _, sql in cases:
            if sql is not None:
                ms, done = await sql()
                baselines[name].append(ms)
                finished[name] &= done
            ctx.advance(task)
        for _ in range(ctx.repeat_count):
            for name, run, _ in cases:
                values[name].append(await asyncio.to_thread(_engine_p95, run, count))
                ctx.advance(task)
    out = []
    five_p95 = median(values[cases[0][0]])
    for name, _, sql in cases:
        value = median(values[name])
        base = median(baselines[name]) if sql is not None else None
        if name == FALLBACK:
            continue
        if name == COMPILED:
            out.append(_engine_row(name, value, median(values[FALLBACK]), values[name]))
            continue
        if name.startswith("20-step"):
            target, met = "<= 2x the 5-step p95", value <= 2 * five_p95
        elif name.startswith("5-step any"):
            target, met = f"<= {TARGET_MS:.0f} ms", value <= TARGET_MS
        else:
            target = f"<= {TARGET_MS:.0f} ms and >= 3x faster than SQL"
            met = value <= TARGET_MS and base is not None and base >= 3 * value
        cut = "" if finished[name] else " (SQL cut at its timeout: the ratio is a lower bound)"
        out.append(
            Measurement(
                name=f"analysis p95 {name}",
                value=value,
                unit="ms",
                baseline=base,
                baseline_name="straightforward SQL over analytics_events (same run)" if base else None,
                target=target,
                met=met,
                samples=values[name],
                notes=f"{len(store):,} events, {store.learner_count:,} learners; {count} queries/repeat{cut}",
            )
        )
    return out


def _engine_row(name: str, value: float, fallback: float, samples: list[float]) -> Measurement:
    """The compiled single pass against the numpy engine it replaces (funnels.py), same funnel and run."""
    return Measurement(
        name=f"analysis p95 {name}",
        value=value,
        unit="ms",
        baseline=fallback,
        baseline_name="the numpy engine (the fallback without a C compiler), same run",
        headline=False,
        samples=samples,
        notes="learner_funnel only (no report)"
        + ("" if KERNEL else "; the kernel is NOT built: both rows are numpy"),
    )
