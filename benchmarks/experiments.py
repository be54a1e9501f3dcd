"""Experiments: the analysis endpoint over per-variant sums, and ``tracker.variant`` on the app's hot path.

* **Analysis endpoint p95** (``GET /api/analytics/experiments/{key}/analysis``, in-process over ASGI, JWT
  and audit included) with 100k exposed learners (quick: 10k) and 5 metrics, against computing the same
  analysis from the per-learner rows (``experiment_learners``: read, summed per variant, analysed) in the
  same run. Target: at most 25 ms.
* **tracker.variant**, the learner already exposed (a dictionary lookup), against a bare ``span.add_event``
  of the exposure's attributes on a current span (target: at most 1x); and the first call (HMAC assignment,
  pseudonym, exposure event) against the same (target: at most 2x).

Run alone: ``studyin-analytics bench --only experiments [--quick]``.
"""

from __future__ import annotations

import gc
import json
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import jwt
import numpy as np
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from ..aggregator.api.app import create_app
from ..aggregator.cli.settings import Settings
from ..aggregator.consumer.experiments import LearnerState
from ..aggregator.experiments import store
from ..aggregator.experiments.definitions import METRICS, ExperimentDefinition
from ..aggregator.experiments.report import analyse
from ..aggregator.storage.db import connect
from ..instrumentation import semconv
from ..instrumentation.experiments import ExperimentSpec
from ..instrumentation.privacy import Pseudonymizer
from ..instrumentation.tracker import StudyInTracker
from .framework import BenchContext, Measurement, bench, median

FULL_LEARNERS, QUICK_LEARNERS = 100_000, 5_000
REQUESTS, QUICK_REQUESTS = 200, 20
TARGET_MS = 25.0
KEY = "bench-experiment"
METRIC_NAMES = ("study_minutes", "completion_rate", "sessions", "xp", "ai_coach_rating")
SEED = 20261203


class _Discard(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _learner_rows(learners: int) -> list[tuple[str, str, int, str, datetime, Any, str]]:
    """Per-learner state as the aggregator keeps it: totals and covariates of the catalogue metrics."""
    rng = np.random.default_rng(SEED)
    variant = rng.integers(0, 2, learners)
    pre_minutes = rng.gamma(2.0, 300.0, learners).round(1)
    minutes = (0.6 * pre_minutes + rng.gamma(2.0, 300.0, learners) * (1 + 0.05 * variant)).round(1)
    sessions, xp = rng.poisson(4, learners), rng.poisson(40, learners)
    completions, ratings = rng.poisson(0.8, learners), rng.integers(0, 4, learners)
    now = datetime.now(UTC)
    rows = []
    for i in range(learners):
        totals = {
            "study_minutes": [str(minutes[i]), "1", str(pre_minutes[i]), "1"],
            "completion_rate": [str(completions[i]), str(completions[i]), "0", "0"],
            "sessions": [str(sessions[i]), str(sessions[i]), "0", "0"],
            "xp": [str(xp[i]), "1", "0", "0"],
            "ai_coach_rating": [str(4 * ratings[i]), str(ratings[i]), "0", "0"],
        }
        name = ("control", "treatment")[variant[i]]
        rows.append((f"bench:{i:032x}", KEY, 1, name, now, _uuid(i), json.dumps(totals)))
    return rows


def _uuid(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


def _sums(
    states: list[tuple[str, LearnerState]],
) -> tuple[dict[str, int], dict[tuple[str, str], dict[str, Any]]]:
    """Per-variant sums of per-learner values (the baseline's work, and the table's content)."""
    sums: dict[tuple[str, str], dict[str, Any]] = {}
    exposed: dict[str, int] = {}
    for variant, state in states:
        exposed[variant] = exposed.get(variant, 0) + 1
        for metric in METRICS:
            values = state.values(metric)
            if values is None:
                continue
            y, x = values
            row = sums.setdefault((variant, metric), dict.fromkeys(_COLUMNS, 0))
            row["n"] += 1
            row["successes"] += 1 if METRICS[metric].kind == "rate" and y > 0 else 0
            for name, amount in zip(_COLUMNS[2:], (y, y * y, x, x * x, x * y), strict=True):
                row[name] += amount
    return exposed, sums


_COLUMNS = ("n", "successes", "sum", "sum_squares", "covariate_sum", "covariate_sum_squares", "cross_sum")


def _states(records: Any) -> list[tuple[str, LearnerState]]:
    out = []
    for r in records:
        totals = {m: [Decimal(v) for v in t] for m, t in json.loads(r["totals"]).items()}
        out.append((r["variant"], LearnerState(r["variant"], 0, None, totals)))
    return out


async def _prepare(settings: Settings, learners: int) -> ExperimentDefinition:
    definition = ExperimentDefinition.model_validate(
        {
            "key": KEY,
            "variants": {"control": 1, "treatment": 1},
            "starts_at": "2026-01-01T00:00:00Z",
            "primary_metric": METRIC_NAMES[0],
            "guardrail_metrics": list(METRIC_NAMES[1:]),
        }
    )
    conn = await connect(settings)
    try:
        await store.create(conn, definition, "bench")
        rows = _learner_rows(learners)
        await conn.reset_type_codec(
            "jsonb", schema="pg_catalog"
        )  # JSON text, by binary COPY (as the aggregator)
        await conn.copy_records_to_table(
            "experiment_learners",
            records=rows,
            columns=[
                "user_hash",
                "experiment_key",
                "version",
                "variant",
                "exposed_at",
                "exposure_id",
                "totals",
            ],
        )
        records = await conn.fetch("SELECT variant, totals::text AS totals FROM experiment_learners")
        _, sums = _sums(_states(records))
        await conn.executemany(
            "INSERT INTO experiment_variant_sums (experiment_key, version, variant, metric, n, successes, "
            "sum, sum_squares, covariate_sum, covariate_sum_squares, cross_sum) "
            "VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(KEY, v, m, *(row[c] for c in _COLUMNS)) for (v, m), row in sums.items()],
        )
    finally:
        await conn.close()
    return definition


def _token(settings: Settings) -> str:
    assert settings.jwt_secret is not None, "the bench needs STUDYIN_ANALYTICS_JWT_SECRET (or the runner's)"
    now = datetime.now(UTC)
    claims = {
        "sub": "bench-staff",
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + timedelta(hours=1),
        "roles": [settings.staff_role],
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


async def _endpoint_rows(ctx: BenchContext) -> list[Measurement]:
    settings = await ctx.migrated_settings("experiments")
    learners = ctx.scale(FULL_LEARNERS, QUICK_LEARNERS)
    count = ctx.scale(REQUESTS, QUICK_REQUESTS)
    async with ctx.task(f"experiments: {learners:,} learners' state and sums"):
        definition = await _prepare(settings, learners)
    app = create_app(settings)
    headers = {"authorization": f"Bearer {_token(settings)}"}
    values: list[float] = []
    baselines: list[float] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            path = f"/api/analytics/experiments/{KEY}/analysis"
            assert (await client.get(path, headers=headers)).status_code == 200  # warm-up
            conn = await connect(settings)
            try:
                for _ in range(ctx.repeat_count):
                    samples = []
                    for _ in range(count):
                        t0 = time.perf_counter()
                        response = await client.get(path, headers=headers)
                        samples.append((time.perf_counter() - t0) * 1000)
                        assert response.status_code == 200
                    values.append(_p95(samples))
                    base = []
                    for _ in range(3):  # seconds each at 100k learners
                        t0 = time.perf_counter()
                        records = await conn.fetch(
                            "SELECT variant, totals::text AS totals FROM experiment_learners "
                            "WHERE experiment_key = $1 AND version = 1",
                            KEY,
                        )
                        exposed, sums = _sums(_states(records))
                        analyse(definition, exposed, sums, k=settings.min_cohort_size)
                        base.append((time.perf_counter() - t0) * 1000)
                    baselines.append(_p95(base))
            finally:
                await conn.close()
    value = median(values)
    return [
        Measurement(
            name="experiments analysis endpoint p95",
            value=value,
            unit="ms",
            baseline=median(baselines),
            baseline_name="the same analysis from per-learner rows (same run)",
            target=f"<= {TARGET_MS:.0f} ms",
            met=value <= TARGET_MS,
            samples=values,
            notes=f"{learners:,} exposed learners, 2 variants, {len(METRIC_NAMES)} metrics; "
            f"{count} requests/repeat",
        )
    ]


def _per_call_us(call: Callable[[], object], n: int, provider: TracerProvider) -> float:
    tracer = provider.get_tracer("bench.request")
    gc.collect()
    elapsed = 0.0
    for _ in range(max(n // 100, 1)):
        with tracer.start_as_current_span("GET /bench"):
            t0 = time.perf_counter()
            for _ in range(100):
                call()
            elapsed += time.perf_counter() - t0
    return elapsed / (max(n // 100, 1) * 100) * 1e6


def _variant_rows(ctx: BenchContext) -> list[Measurement]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Discard()))
    pseudonymizer = Pseudonymizer({"b1": b"bench-only-key-0123456789"}, "b1")
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
    spec = ExperimentSpec(KEY, 1, ("control", "treatment"), (1, 1))
    snapshot = {KEY: spec}
    n = ctx.scale(20_000, 2_000)
    users = iter([f"learner-{i}" for i in range((ctx.repeat_count + 1) * n + 100)])
    tracker.use_experiments(lambda: snapshot, assignment_key="bench-assignment-key-0001", remembered=10**7)
    tracker.variant("learner-x", KEY)
    attributes: dict[str, Any] = {
        semconv.EVENT_VERSION: 1,
        "studyin.experiment.key": KEY,
        "studyin.experiment.version": 1,
        "studyin.experiment.variant": "control",
        semconv.USER_HASH: tracker.user_hash("learner-x"),
    }
    name = semconv.event_name("experiment_exposure")

    def bare() -> object:
        trace.get_current_span().add_event(name, dict(attributes))
        return None

    cases = [
        ("tracker.variant (already exposed)", lambda: tracker.variant("learner-x", KEY), "<= 1x"),
        ("tracker.variant (first call: exposure)", lambda: tracker.variant(next(users), KEY), "<= 2x"),
    ]
    rows = []
    for title, call, target in cases:
        values, baselines = [], []
        for _ in range(ctx.repeat_count):
            baselines.append(_per_call_us(bare, n, provider))
            values.append(_per_call_us(call, n, provider))
        value, base = median(values), median(baselines)
        limit = 1.0 if target == "<= 1x" else 2.0
        rows.append(
            Measurement(
                name=title,
                value=value,
                unit="µs",
                baseline=base,
                baseline_name="span.add_event, the exposure's attributes",
                target=f"{target} the bare add_event",
                met=value <= limit * base,
                samples=values,
                notes=f"per call, {n} calls x {ctx.repeat_count}, on a current request span",
            )
        )
    provider.shutdown()
    return rows


@bench("experiments")
async def experiments(ctx: BenchContext) -> list[Measurement]:
    """The analysis endpoint over per-variant sums, and tracker.variant on the hot path."""
    return [*_variant_rows(ctx), *await _endpoint_rows(ctx)]
