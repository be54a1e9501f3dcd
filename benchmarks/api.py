"""Query API latency: p95 of every GET with 10M raw events from 10k learners loaded.

Loading: raw events are generated deterministically (seeded) and streamed into
``analytics_events`` with ``COPY`` (progress shown); the rollup tables the API reads are then
derived from those raw rows by set-based SQL in PostgreSQL (a bulk-load shortcut for what the
aggregator does incrementally), so every rollup is consistent with the raw data. Quick mode
loads 100k events from 500 learners.

Measuring: each GET is called in this process through httpx's ASGI transport (no socket;
the app, its JWT check, the rollup queries and the audit-log insert are all in the figure),
for random learners, sequentially. A value is the p95 of one repeat's requests; the row is
the median over repeats. Baseline: ``GET /healthz`` measured the same way in the same run
(framework + transport floor), so the ratio is how many "empty requests" one GET costs.

Target: p95 <= 25 ms for each GET.

Run alone: ``studyin-analytics bench --only api [--quick]``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
import jwt

from ..aggregator.api.app import SYSTEM_METRICS_TTL_S, create_app
from ..aggregator.cli.settings import Settings
from ..aggregator.storage.db import connect
from ..aggregator.storage.schema import ensure_partitions
from ..instrumentation.privacy import Pseudonymizer
from .framework import BenchContext, Measurement, at_most, bench, median

TARGET_P95_MS = 25.0
FULL_EVENTS, QUICK_EVENTS = 10_000_000, 100_000
FULL_USERS, QUICK_USERS = 10_000, 500
DAYS_OF_DATA = 90
COPY_CHUNK = 50_000
REQUESTS_PER_REPEAT = 200
QUICK_REQUESTS = 40
WARMUP_REQUESTS = 20
SEED = 20261125

ROUTES: tuple[tuple[str, str], ...] = tuple(
    [(f"/api/materials/{{material_id}}/part{i}", "GET") for i in range(12)]
    + [(f"/api/quiz/{{quiz_id}}/answer{i}", "POST") for i in range(8)]
    + [("/api/coach/ask", "POST"), ("/api/progress", "GET"), ("/api/feed", "GET"), ("/api/search", "GET")]
)

# Event mix: (type, share). api_request events are the backend's HTTP server spans.
MIX: tuple[tuple[str, float], ...] = (
    ("api_request", 0.50),
    ("material_view", 0.15),
    ("material_progress", 0.06),
    ("material_complete", 0.05),
    ("xp_awarded", 0.10),
    ("session_start", 0.05),
    ("session_end", 0.05),
    ("ai_coach_interaction", 0.04),
)

# DDSketch parameters of the latency histograms (aggregator/consumer/histogram.py; SQL twin in 0002).
HIST_GAMMA = (1 + 0.01) / (1 - 0.01)

ROLLUP_SQL: tuple[tuple[str, str], ...] = (
    (
        "daily_activity_summary",
        """
        INSERT INTO daily_activity_summary
            (user_hash, day, sessions, study_seconds, materials_viewed, materials_completed, xp, events)
        SELECT user_hash, (occurred_at AT TIME ZONE 'UTC')::date,
               count(*) FILTER (WHERE event_type = 'session_start'),
               coalesce(sum((properties->>'duration_s')::float8)
                        FILTER (WHERE event_type = 'session_end'), 0),
               count(*) FILTER (WHERE event_type = 'material_view'),
               count(*) FILTER (WHERE event_type = 'material_complete'),
               coalesce(sum((properties->>'xp_amount')::int) FILTER (WHERE event_type = 'xp_awarded'), 0),
               count(*)
        FROM analytics_events WHERE user_hash IS NOT NULL GROUP BY 1, 2
        """,
    ),
    (
        "daily_learners",
        """
        INSERT INTO daily_learners (day, learners)
        SELECT day, count(*) FROM daily_activity_summary GROUP BY day
        """,
    ),
    (
        "user_activity_hourly",
        """
        INSERT INTO user_activity_hourly
            (user_hash, hour, events, sessions, study_seconds, materials_viewed, materials_completed,
             xp, ai_interactions)
        SELECT user_hash, date_trunc('hour', occurred_at), count(*),
               count(*) FILTER (WHERE event_type = 'session_start'),
               coalesce(sum((properties->>'duration_s')::float8)
                        FILTER (WHERE event_type = 'session_end'), 0),
               count(*) FILTER (WHERE event_type = 'material_view'),
               count(*) FILTER (WHERE event_type = 'material_complete'),
               coalesce(sum((properties->>'xp_amount')::int) FILTER (WHERE event_type = 'xp_awarded'), 0),
               count(*) FILTER (WHERE event_type = 'ai_coach_interaction')
        FROM analytics_events WHERE user_hash IS NOT NULL GROUP BY 1, 2
        """,
    ),
    (
        "gamification_stats",
        """
        INSERT INTO gamification_stats
            (user_hash, xp_total, level, achievements, current_streak, longest_streak, streak_as_of,
             last_activity_at)
        SELECT d.user_hash, d.xp, 1 + d.xp::int / 1000,
               ARRAY['first-steps', 'level-' || (1 + d.xp::int / 1000)],
               (d.days % 30)::int, (d.days % 60)::int, d.last_day::timestamptz,
               (SELECT max(h.hour) + interval '59 minutes' FROM user_activity_hourly h
                WHERE h.user_hash = d.user_hash)
        FROM (SELECT user_hash, sum(xp) AS xp, count(*) AS days, max(day) AS last_day
              FROM daily_activity_summary GROUP BY user_hash) d
        """,
    ),
    ("system_metrics", ""),  # built by _system_metrics_sql()
    (
        "system_metrics_hourly",
        """
        INSERT INTO system_metrics_hourly
            (hour, route, method, requests, errors, client_errors, errors_by_type, latency_sum_ms,
             latency_min_ms, latency_max_ms, latency_hist)
        SELECT date_trunc('hour', minute), route, method, sum(requests), sum(errors), sum(client_errors),
               count_map_sum(errors_by_type), sum(latency_sum_ms), min(latency_min_ms),
               max(latency_max_ms), count_map_sum(latency_hist)
        FROM system_metrics GROUP BY 1, 2, 3
        """,
    ),
    (
        "hourly_analytics_summary",
        """
        INSERT INTO hourly_analytics_summary
            (hour, events, events_by_type, active_users, sessions, study_seconds, materials_viewed,
             materials_completed, xp, ai_interactions, api_requests, api_errors)
        SELECT h.hour, h.events, t.by_type, h.active_users, h.sessions, h.study_seconds,
               h.materials_viewed, h.materials_completed, h.xp, h.ai_interactions,
               coalesce(a.requests, 0), coalesce(a.errors, 0)
        FROM (SELECT hour, sum(events) AS events, count(DISTINCT user_hash) AS active_users,
                     sum(sessions) AS sessions, sum(study_seconds) AS study_seconds,
                     sum(materials_viewed) AS materials_viewed,
                     sum(materials_completed) AS materials_completed, sum(xp) AS xp,
                     sum(ai_interactions) AS ai_interactions
              FROM user_activity_hourly GROUP BY hour) h
        LEFT JOIN (SELECT date_trunc('hour', minute) AS hour, sum(requests) AS requests,
                          sum(errors) AS errors
                   FROM system_metrics GROUP BY 1) a USING (hour)
        LEFT JOIN (SELECT hour, jsonb_object_agg(event_type, n) AS by_type
                   FROM (SELECT date_trunc('hour', occurred_at) AS hour, event_type, count(*) AS n
                         FROM analytics_events GROUP BY 1, 2) x GROUP BY hour) t USING (hour)
        """,
    ),
)


@dataclass
class Dataset:
    settings: Settings
    user_ids: list[str]
    events: int
    seconds_copy: float
    seconds_rollups: float


def _events_plan(rng: random.Random, total: int) -> list[str]:
    """Event types of ``total`` events in the mix's proportions, shuffled."""
    plan: list[str] = []
    for event_type, share in MIX:
        plan.extend([event_type] * round(total * share))
    plan = plan[:total] + ["material_view"] * max(0, total - len(plan))
    rng.shuffle(plan)
    return plan


def _properties(rng: random.Random, event_type: str) -> str:
    """``properties`` of a learning event (api_request events use :func:`_api_templates`)."""
    if event_type in ("material_view", "material_progress", "material_complete"):
        return f'{{"material_id": "m-{rng.randrange(2000)}", "material_type": "video"}}'
    if event_type == "xp_awarded":
        return f'{{"xp_amount": {rng.choice((5, 10, 10, 25, 50))}, "xp_reason": "quiz"}}'
    if event_type == "session_end":
        return f'{{"duration_s": {rng.randint(60, 3600)}}}'
    if event_type == "ai_coach_interaction":
        return f'{{"latency_ms": {rng.randint(200, 4000)}, "tokens_in": 120, "tokens_out": 300}}'
    return "{}"


def _api_templates() -> list[str]:
    """``properties`` of api_request events up to the duration (appended per event)."""
    out = []
    for route, method in ROUTES:
        for status, error in ((200, "null"), (404, "null"), (500, '"TimeoutError"')):
            out.append(
                f'{{"route": "{route}", "method": "{method}", "status_code": {status}, '
                f'"error_type": {error}, "duration_ms": '
            )
    return out


async def _raw_rows(
    rng: random.Random, total: int, hashes: list[str], start: datetime, seconds: int
) -> AsyncIterator[bytes]:
    """COPY text lines of ``total`` raw events, in chunks (string templates: this is the hot loop)."""
    plan = _events_plan(rng, total)
    minutes = [(start + timedelta(minutes=m)).strftime("%Y-%m-%d %H:%M") for m in range(seconds // 60 + 2)]
    api = _api_templates()
    routes = len(ROUTES)
    lines: list[str] = []
    users = len(hashes)
    rand = rng.random
    for i, event_type in enumerate(plan):
        # Recent days are busier (a growing product), which keeps the short windows realistic.
        offset = int(seconds * (1 - rand() ** 1.5))
        moment = f"{minutes[offset // 60]}:{offset % 60:02d}+00"
        user = hashes[int(users * rand() ** 1.3)]
        if event_type == "api_request":
            roll = rand()
            outcome = 0 if roll < 0.97 else (1 if roll < 0.99 else 2)
            route = min(int(rng.expovariate(0.25)), routes - 1)
            props = f"{api[route * 3 + outcome]}{rng.lognormvariate(2.3, 0.6):.3f}}}"
        else:
            props = _properties(rng, event_type)
        lines.append(f"{i:032x}\t{moment}\t{event_type}\t{user}\t\\N\t{props}\n")
        if len(lines) >= COPY_CHUNK:
            yield "".join(lines).encode()
            lines.clear()
            await asyncio.sleep(0)
    if lines:
        yield "".join(lines).encode()


async def load_dataset(ctx: BenchContext, settings: Settings, events: int, users: int) -> Dataset:
    """Migrate, COPY ``events`` raw events of ``users`` learners, derive the rollups."""
    rng = random.Random(SEED)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    user_ids = [f"bench-learner-{u:05d}" for u in range(users)]
    hashes = [pseudonymizer.pseudonymize(u) for u in user_ids]
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=DAYS_OF_DATA)
    conn = await connect(settings)
    try:
        days = {start.date() + timedelta(days=d) for d in range(DAYS_OF_DATA + 2)}
        await ensure_partitions(conn, days, set())
        t0 = time.perf_counter()
        async with ctx.task(f"COPY {events:,} raw events", total=events) as task:
            chunks = _raw_rows(rng, events, hashes, start, int((now - start).total_seconds()))

            async def source() -> AsyncIterator[bytes]:
                async for chunk in chunks:
                    yield chunk
                    ctx.advance(task, chunk.count(b"\n"))

            await conn.copy_to_table(
                "analytics_events",
                source=source(),
                columns=["event_id", "occurred_at", "event_type", "user_hash", "session_id", "properties"],
                format="text",
            )
        seconds_copy = time.perf_counter() - t0
        t0 = time.perf_counter()
        async with ctx.task("deriving rollups from raw events", total=len(ROLLUP_SQL) + 1) as task:
            # Statistics first, and no nested loops: the CTEs below join millions of rows, and
            # an estimate made before ANALYZE once picked a plan that ran for many minutes.
            await conn.execute("ANALYZE analytics_events")
            await conn.execute("SET enable_nestloop = off")
            for table, sql in ROLLUP_SQL:
                await conn.execute(sql or _system_metrics_sql())
                ctx.advance(task)
                del table
            # Settle the freshly loaded tables (visibility map, statistics) so autovacuum does
            # not start in the middle of the measurement.
            await conn.execute("RESET enable_nestloop")
            await conn.execute("VACUUM (ANALYZE)")
            ctx.advance(task)
        seconds_rollups = time.perf_counter() - t0
    finally:
        await conn.close()
    return Dataset(settings, user_ids, events, seconds_copy, seconds_rollups)


def _system_metrics_sql() -> str:
    """Per-minute route rollup with a DDSketch histogram, built in one pass over api_request rows."""
    log_gamma = math.log(HIST_GAMMA)
    return f"""
    INSERT INTO system_metrics
        (minute, route, method, requests, errors, client_errors, errors_by_type, latency_sum_ms,
         latency_min_ms, latency_max_ms, latency_hist)
    WITH r AS (
        SELECT date_trunc('minute', occurred_at) AS minute, properties->>'route' AS route,
               properties->>'method' AS method, properties->>'error_type' AS error_type,
               (properties->>'status_code')::int AS status, (properties->>'duration_ms')::float8 AS ms
        FROM analytics_events WHERE event_type = 'api_request'
    ), b AS (
        SELECT minute, route, method, ceil(ln(greatest(ms, 1e-6)) / {log_gamma!r})::int AS k, count(*) AS n
        FROM r GROUP BY 1, 2, 3, 4
    ), h AS (
        SELECT minute, route, method, jsonb_object_agg(k::text, n) AS hist FROM b GROUP BY 1, 2, 3
    ), e AS (
        SELECT minute, route, method, jsonb_object_agg(error_type, n) AS by_type
        FROM (SELECT minute, route, method, error_type, count(*) AS n FROM r
              WHERE error_type IS NOT NULL GROUP BY 1, 2, 3, 4) x
        GROUP BY 1, 2, 3
    ), t AS (
        SELECT minute, route, method, count(*) AS requests,
               count(*) FILTER (WHERE error_type IS NOT NULL) AS errors,
               count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS client_errors,
               sum(ms) AS s, min(ms) AS mn, max(ms) AS mx
        FROM r GROUP BY 1, 2, 3
    )
    SELECT t.minute, t.route, t.method, t.requests, t.errors, t.client_errors,
           coalesce(e.by_type, '{{}}'::jsonb), t.s, t.mn, t.mx, h.hist
    FROM t JOIN h USING (minute, route, method) LEFT JOIN e USING (minute, route, method)
    """


def staff_or_learner_token(settings: Settings, sub: str, staff: bool) -> str:
    assert settings.jwt_secret is not None, "the bench needs STUDYIN_ANALYTICS_JWT_SECRET (or the runner's)"
    now = datetime.now(UTC)
    claims = {
        "sub": sub,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + timedelta(hours=2),
        "roles": [settings.staff_role] if staff else [],
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


@dataclass(frozen=True)
class Probe:
    name: str
    path: str
    params: dict[str, str]
    staff: bool = False
    result_cache: bool = False
    """True: the app's 10 s result cache may answer (system metrics only)."""
    block_cache: bool = True
    """False: the per-hour cache of system metrics is emptied before every request (fully cold)."""
    requests: int | None = None
    """Requests per repeat when not the default (slow cold probes)."""


def probes(today: date) -> list[Probe]:
    prefix = "/api/analytics"
    return [
        Probe("GET learning/overview days=30", f"{prefix}/learning/overview", {"days": "30"}),
        Probe("GET learning/overview days=365", f"{prefix}/learning/overview", {"days": "365"}),
        Probe(
            "GET learning/heatmap 365 days, Europe/Berlin",
            f"{prefix}/learning/heatmap",
            {"tz": "Europe/Berlin", "end": str(today), "start": str(today - timedelta(days=364))},
        ),
        Probe("GET gamification/progress days=90", f"{prefix}/gamification/progress", {"days": "90"}),
        Probe("GET system/metrics window=1h", f"{prefix}/system/metrics", {"window": "1h"}, True),
        Probe("GET system/metrics window=24h", f"{prefix}/system/metrics", {"window": "24h"}, True),
        Probe(
            "GET system/metrics window=24h, cold (no caches)",
            f"{prefix}/system/metrics",
            {"window": "24h"},
            staff=True,
            block_cache=False,
            requests=20,
        ),
        Probe(
            f"GET system/metrics window=24h, {SYSTEM_METRICS_TTL_S}s result cache",
            f"{prefix}/system/metrics",
            {"window": "24h"},
            staff=True,
            result_cache=True,
        ),
        Probe("GET cohort/overview days=30", f"{prefix}/cohort/overview", {"days": "30"}, staff=True),
    ]


def p95(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


async def _timed(
    client: httpx.AsyncClient, path: str, params: dict[str, str], headers: dict[str, str]
) -> float:
    t0 = time.perf_counter()
    response = await client.get(path, params=params, headers=headers)
    elapsed = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:200]}")
    return elapsed


async def measure(ctx: BenchContext, data: Dataset) -> list[Measurement]:
    settings = data.settings
    rng = random.Random(SEED + 1)
    requests = ctx.scale(REQUESTS_PER_REPEAT, QUICK_REQUESTS)
    learner_tokens = [staff_or_learner_token(settings, u, staff=False) for u in data.user_ids[:500]]
    staff_token = staff_or_learner_token(settings, "bench-staff", staff=True)
    app = create_app(settings)
    rows: list[Measurement] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

            def headers_for(probe: Probe | None) -> dict[str, str]:
                value = staff_token if probe is not None and probe.staff else rng.choice(learner_tokens)
                return {"authorization": f"Bearer {value}"}

            all_probes = probes(datetime.now(UTC).date())
            total = (len(all_probes) + 1) * ctx.repeat_count * (requests + WARMUP_REQUESTS)
            async with ctx.task("timing GETs", total=total) as task:
                baseline_p95: list[float] = []
                results: dict[str, list[float]] = {p.name: [] for p in all_probes}
                for _ in range(ctx.repeat_count):
                    # Baseline and probes interleave per repeat, so drift hits both alike.
                    for probe in [None, *all_probes]:
                        app.state.system_cache.clear()
                        cached = probe is not None and probe.result_cache
                        app.state.system_metrics_ttl_s = SYSTEM_METRICS_TTL_S if cached else 0
                        cold = probe is not None and not probe.block_cache
                        path = "/healthz" if probe is None else probe.path
                        params = {} if probe is None else probe.params
                        count = requests if probe is None or probe.requests is None else probe.requests
                        count = min(count, requests)
                        for _ in range(WARMUP_REQUESTS if not cold else 1):
                            await _timed(client, path, params, headers_for(probe))
                        ctx.advance(task, WARMUP_REQUESTS)
                        samples = []
                        for _ in range(count):
                            if cold:
                                app.state.block_cache.clear()
                            samples.append(await _timed(client, path, params, headers_for(probe)))
                        ctx.advance(task, requests)
                        (baseline_p95 if probe is None else results[probe.name]).append(p95(samples))
    baseline = median(baseline_p95)
    for probe in all_probes:
        value = median(results[probe.name])
        target, met = at_most(value, TARGET_P95_MS, "ms")
        rows.append(
            Measurement(
                name=f"api p95 {probe.name}",
                value=value,
                unit="ms",
                baseline=baseline,
                baseline_name="GET /healthz p95 (same run)",
                target=target,
                met=met,
                samples=results[probe.name],
                notes=(
                    f"{data.events:,} raw events, {len(data.user_ids):,} learners; {requests} requests/repeat"
                ),
            )
        )
    rows.append(
        Measurement(
            name="api load: COPY raw events",
            value=data.events / data.seconds_copy if data.seconds_copy else float("nan"),
            unit="events/s",
            notes=f"rollups derived in {data.seconds_rollups:.1f}s (set-based SQL)",
            headline=False,
        )
    )
    return rows


@bench("api")
async def api_latency(ctx: BenchContext) -> list[Measurement]:
    """p95 latency of every GET of the query API with a large data set loaded."""
    settings = await ctx.migrated_settings("api")
    events = ctx.scale(FULL_EVENTS, QUICK_EVENTS)
    users = ctx.scale(FULL_USERS, QUICK_USERS)
    data = await load_dataset(ctx, settings, events, users)
    return await measure(ctx, data)
