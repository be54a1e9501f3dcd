"""``studyin-analytics demo``: the whole pipeline, end to end, on one machine.

Simulated students use an instrumented StudyIn-like backend; spans go through the Redis
exporter to the bus, the aggregator rolls them into PostgreSQL, and the query API answers.
Without configured URLs it starts embedded Redis and PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import jwt
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...exporter import RedisStreamSpanExporter
from ...instrumentation import StudyInTracker
from ...instrumentation.privacy import Pseudonymizer
from ..api.app import create_app
from ..cli.settings import Settings
from ..consumer.service import Aggregator
from ..consumer.startup import wait_for_services
from ..storage.db import connect
from ..storage.schema import migrate
from .embedded import servers_for
from .simulation import Ledger, new_user_ids, simulate_students

DEMO_WAIT_S = 60.0
"""How long the demo waits for configured Redis and PostgreSQL servers to answer (e.g. containers
started with it), as the aggregator's ``--wait-for-services``."""

SYSTEM_METRICS_SQL = """
SELECT route, sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       hist_quantile(count_map_sum(latency_hist), 0.5) AS p50,
       hist_quantile(count_map_sum(latency_hist), 0.95) AS p95,
       hist_quantile(count_map_sum(latency_hist), 0.99) AS p99
FROM system_metrics
GROUP BY route ORDER BY 2 DESC
"""
"""Per-route API metrics from the ``system_metrics`` rollup: per-minute DDSketch histograms
summed over the whole run (percentiles within 1 % relative error, see histogram.py)."""


@dataclass
class DemoReport:
    students: int
    requests: int
    events_inserted: int
    matches_ground_truth: bool
    seconds: float


def _demo_settings(settings: Settings) -> Settings:
    changes: dict[str, object] = {}
    if not settings.pseudonym_keys:
        # A throw-away key: demo pseudonyms cannot be linked to anything after the run.
        changes["pseudonym_keys"] = {"demo": secrets.token_urlsafe(32)}
        changes["pseudonym_key_id"] = "demo"
    if settings.jwt_secret is None and settings.jwt_public_key is None:
        changes["jwt_secret"] = secrets.token_urlsafe(32)
    return settings.with_overrides(**changes) if changes else settings


def _token(settings: Settings, user_id: str) -> str:
    assert settings.jwt_secret is not None
    now = datetime.now(UTC)
    claims = {
        "sub": user_id,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


async def run_demo(settings: Settings, *, students: int = 8, console: Console | None = None) -> DemoReport:
    console = console or Console()
    started = time.monotonic()
    need_redis = settings.redis_url is None
    need_postgres = settings.postgres_url is None
    with contextlib.ExitStack() as stack:
        if need_redis or need_postgres:
            console.print("[dim]no Redis/PostgreSQL URL configured: using embedded servers[/]")
        settings = _demo_settings(stack.enter_context(servers_for(settings)))
        if not (need_redis and need_postgres):  # configured servers may still be starting
            with console.status("waiting for Redis and PostgreSQL"):
                await wait_for_services(settings, DEMO_WAIT_S, migrated=False)
        with console.status("migrating the analytics schema"):
            await asyncio.to_thread(migrate, settings)

        pseudonymizer = Pseudonymizer.from_settings(settings)
        provider = TracerProvider(resource=Resource.create({"service.name": "studyin-demo-backend"}))
        exporter = RedisStreamSpanExporter(settings)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
        tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
        from .simulation import build_backend

        backend = build_backend(tracker, pseudonymizer, tracer_provider=provider)
        user_ids = new_user_ids(students)

        async with Aggregator(settings) as aggregator:
            stop = asyncio.Event()
            consumer = asyncio.create_task(aggregator.run(stop))
            with console.status(f"{students} simulated students are studying"):
                ledger = await simulate_students(backend, user_ids)
                await asyncio.to_thread(provider.force_flush)
            stop.set()
            await consumer
            with console.status("aggregating"):
                totals = await aggregator.drain()
        provider.shutdown()

        app = create_app(settings)
        overviews: dict[str, dict[str, object]] = {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                for user_id in user_ids:
                    response = await client.get(
                        "/api/analytics/learning/overview",
                        params={"days": 30},
                        headers={"authorization": f"Bearer {_token(settings, user_id)}"},
                    )
                    response.raise_for_status()
                    overviews[user_id] = response.json()
        conn = await connect(settings)
        try:
            system_rows = await conn.fetch(SYSTEM_METRICS_SQL)
        finally:
            await conn.close()

    ok = _print_report(console, user_ids, overviews, ledger, pseudonymizer, system_rows)
    report = DemoReport(
        students=students,
        requests=ledger.requests,
        events_inserted=totals.events_inserted,
        matches_ground_truth=ok,
        seconds=time.monotonic() - started,
    )
    console.print(
        f"[bold]{report.requests}[/] requests, [bold]{report.events_inserted}[/] events aggregated in "
        f"{report.seconds:.1f}s; rollups {'match' if ok else '[red]DO NOT match[/]'} "
        "the simulation's own count."
    )
    return report


def _print_report(
    console: Console,
    user_ids: list[str],
    overviews: dict[str, dict[str, object]],
    ledger: Ledger,
    pseudonymizer: Pseudonymizer,
    system_rows: list[object],
) -> bool:
    table = Table(title="Learning overview (last 30 days), from GET /api/analytics/learning/overview")
    for column in ("student (pseudonym)", "sessions", "study min", "viewed", "completed", "XP", "truth"):
        table.add_column(column, justify="right" if column != "student (pseudonym)" else "left")
    all_ok = True
    for user_id in user_ids:
        o = overviews[user_id]
        truth = (
            ledger.sessions.get(user_id, 0),
            ledger.materials_viewed.get(user_id, 0),
            ledger.materials_completed.get(user_id, 0),
            ledger.xp.get(user_id, 0),
        )
        got = (o["sessions"], o["materials_viewed"], o["materials_completed"], o["xp"])
        ok = truth == got
        all_ok &= ok
        table.add_row(
            pseudonymizer.pseudonymize(user_id)[:20] + "…",
            str(o["sessions"]),
            f"{o['study_minutes']:.2f}",
            str(o["materials_viewed"]),
            str(o["materials_completed"]),
            str(o["xp"]),
            "[green]✓[/]" if ok else "[red]✗[/]",
        )
    console.print(table)
    system = Table(title="System metrics (system_metrics rollup: per-minute latency histograms, summed)")
    for column in ("route", "requests", "errors", "p50 ms", "p95 ms", "p99 ms"):
        system.add_column(column, justify="left" if column == "route" else "right")
    for row in system_rows:
        r = dict(row)  # type: ignore[call-overload]
        system.add_row(
            Text(str(r["route"])),  # data: no markup, no emoji codes
            str(r["requests"]),
            str(r["errors"]),
            f"{r['p50']:.2f}",
            f"{r['p95']:.2f}",
            f"{r['p99']:.2f}",
        )
    console.print(system)
    return all_ok
