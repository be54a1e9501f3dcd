"""``studyin-analytics demo``: the whole pipeline, end to end, on one machine, with weeks of history.

150 simulated learners study over the last 60 days (:mod:`.learners`, :mod:`.history`), walk two
pathways (:mod:`.pathway`) and take part in one experiment (:mod:`.experiment`): their requests go
through an instrumented StudyIn-like backend with a simulated clock, the spans through the Redis
exporter to the bus, an aggregator process rolls them into PostgreSQL, and the query API answers.
Every number printed is checked against the simulation's own count (exit 1 on any difference).
Without configured URLs it starts embedded Redis and PostgreSQL in a temporary directory.
``--serve`` then keeps the API, the dashboard and a trickle of live traffic running
(:mod:`.explore`); ``--screenshots DIR`` takes the README's pictures from this data
(:mod:`.screenshots`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from rich.console import Console
from rich.progress import Progress

from ...exporter import RedisStreamSpanExporter
from ...instrumentation import SpanEventCarrier, StudyInTracker
from ...instrumentation.clock import ManualClock
from ...instrumentation.experiments import ExperimentSpec
from ...instrumentation.privacy import Pseudonymizer
from ..api.app import create_app
from ..cli.settings import Settings
from ..consumer.raw import RAW_TABLE
from ..consumer.service import Aggregator
from ..consumer.startup import wait_for_services
from ..experiments import store as experiment_store
from ..storage.db import connect
from ..storage.schema import migrate
from ..storage.variant import LEARNERLESS_TABLE
from . import experiment, pathway
from .drivers import AsgiClient
from .embedded import servers_for
from .history import HistoryLedger, HistoryPlayer, SimulatedLatency
from .learners import MATERIALS, PlannedSession, learners, plan
from .report import print_report
from .simulation import build_backend

DEMO_WAIT_S = 60.0
"""How long the demo waits for configured Redis and PostgreSQL servers to answer (e.g. containers
started with it), as the aggregator's ``--wait-for-services``."""
STAFF_USER = "demo-staff"
READERS = 8
"""Concurrent reads of the learners' answers (they overlap their PostgreSQL round trips)."""
AGGREGATOR_STOP_S = 30.0
ANALYSIS_WAIT_S = 60.0
"""How long the reads wait for the API's analysis store to hold every stored learning event: it reads
on a commit-ordered watermark, which a long transaction anywhere on the server holds back."""
QUEUE_SIZE = 1 << 20
"""Spans the batch processor may hold: the history is played faster than real time, and a span
dropped for a full queue would be a difference from the truth."""

SYSTEM_METRICS_SQL = """
SELECT route, method, sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       hist_quantile(count_map_sum(latency_hist), 0.5) AS p50,
       hist_quantile(count_map_sum(latency_hist), 0.95) AS p95,
       hist_quantile(count_map_sum(latency_hist), 0.99) AS p99
FROM system_metrics_hourly
GROUP BY route, method ORDER BY 3 DESC, 1, 2
"""
"""Per-route API metrics of the whole history from the hourly route rollup (DDSketch histograms
summed: percentiles within 1 % relative error, see histogram.py)."""


@dataclass
class DemoReport:
    students: int
    requests: int
    events_inserted: int
    matches_ground_truth: bool
    seconds: float


@dataclass
class Backfill:
    """What the history left: the truth, the learners, and the live pieces ``--serve`` reuses."""

    ledger: HistoryLedger
    user_ids: list[str]
    days: int
    sessions: list[PlannedSession]
    player: HistoryPlayer
    provider: TracerProvider
    start: datetime
    """Midnight (UTC) of the history's first day: the experiment's start, the funnels' too."""
    until: datetime
    """The end of the history: the funnels' end."""


def _aggregator_process(settings: Settings) -> subprocess.Popen[bytes]:
    """``studyin-analytics aggregator`` on the demo's bus and tables (no health port)."""
    env = {**os.environ, **settings.environment(), "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", "aggregator"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the aggregator commits and acknowledges its open round, then exits."""
    process.terminate()
    try:
        process.wait(AGGREGATOR_STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()  # its unacknowledged entries stay pending: this process's drain claims them
        process.wait()


async def _stored_events(settings: Settings) -> int:
    """Raw events in PostgreSQL (both tables of the Citus-ready variant)."""
    conn = await connect(settings)
    try:
        total = 0
        for table in (RAW_TABLE, LEARNERLESS_TABLE):
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                total += await conn.fetchval(f"SELECT count(*) FROM {table}")
        return int(total)
    finally:
        await conn.close()


def _demo_settings(settings: Settings) -> Settings:
    changes: dict[str, object] = {}
    if not settings.pseudonym_keys:
        # A throw-away key: demo pseudonyms cannot be linked to anything after the run.
        changes["pseudonym_keys"] = {"demo": secrets.token_urlsafe(32)}
        changes["pseudonym_key_id"] = "demo"
    if settings.jwt_secret is None and settings.jwt_public_key is None:
        changes["jwt_secret"] = secrets.token_urlsafe(32)
    return settings.with_overrides(**changes) if changes else settings


def token(settings: Settings, user_id: str, *, staff: bool = False, minutes: int = 5) -> str:
    """A signed bearer token for ``user_id`` (the demo's own secret)."""
    assert settings.jwt_secret is not None
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": user_id,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
    }
    if staff:
        claims["roles"] = [settings.staff_role]
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def history_span(days: int) -> tuple[datetime, datetime]:
    """The history's first midnight (UTC) and its end (a little before now)."""
    until = datetime.now(UTC) - timedelta(minutes=2)
    first = until.date() - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=UTC), until


async def start_experiment(settings: Settings, start: datetime) -> ExperimentSpec:
    """Define the demo's experiment (a new version if it exists) before any event is aggregated."""
    conn = await connect(settings)
    try:
        stored = await experiment_store.create(
            conn, experiment.definition(start), "studyin-demo", new_version=True
        )
    finally:
        await conn.close()
    return stored.spec()


async def backfill(
    settings: Settings,
    console: Console,
    *,
    people: int,
    days: int,
    seed: int,
    span: tuple[datetime, datetime],
    spec: ExperimentSpec,
) -> Backfill:
    """Play the history through the backend (an aggregator running beside it consumes the bus)."""
    start, until = span
    cast = learners(people, days, seed)
    sessions = plan(cast, days, until, seed)
    clock = ManualClock(until)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    provider = TracerProvider(resource=Resource.create({"service.name": "studyin-demo-backend"}))
    exporter = RedisStreamSpanExporter(settings)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE, schedule_delay_millis=100)
    )
    carrier = SpanEventCarrier.create(provider, clock)  # every event is in a request: span events
    tracker = StudyInTracker(
        tracer_provider=provider, pseudonymizer=pseudonymizer, clock=clock, carrier=carrier
    )
    # The running experiment as the app would follow it; the assignment key is the seed's, so the
    # same seed gives the same split (demo only: a real key is a secret).
    tracker.use_experiments(lambda: {spec.key: spec}, assignment_key=f"studyin-demo-assignment-{seed}")
    backend = build_backend(
        tracker,
        pseudonymizer,
        materials=MATERIALS + pathway.materials(),
        experiments=(spec.key,),
        tracer_provider=provider,
        clock=clock,
    )
    ledger = HistoryLedger()
    player = HistoryPlayer(AsgiClient(backend), clock, ledger)
    backend.add_middleware(SimulatedLatency, clock=clock, latency_ns=player.latency_ns)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{people} learners study for {days} days", total=len(sessions))
        for number, session in enumerate(sessions):
            await player.play(session)
            if number % 20 == 0:
                progress.update(task, completed=number)
    await asyncio.to_thread(provider.force_flush)
    users = [learner.user_id for learner in cast]
    return Backfill(ledger, users, days, sessions, player, provider, start, until)


async def read_back(settings: Settings, data: Backfill) -> dict[str, Any]:
    """What the query API and the rollups say: per learner, and per route for the whole history."""
    app = create_app(settings)
    overviews: dict[str, dict[str, Any]] = {}
    progress: dict[str, dict[str, Any]] = {}
    readers = asyncio.Semaphore(READERS)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:

            async def read(user_id: str) -> None:
                headers = {"authorization": f"Bearer {token(settings, user_id)}"}
                params = {"days": data.days + 1}
                for path, into in (("learning/overview", overviews), ("gamification/progress", progress)):
                    async with readers:
                        response = await client.get(f"/api/analytics/{path}", params=params, headers=headers)
                    response.raise_for_status()
                    into[user_id] = response.json()

            await asyncio.gather(*(read(user_id) for user_id in data.user_ids))
            await _analysis_loaded(settings, app)
            views = await _staff_views(settings, client, data)
    conn = await connect(settings)
    try:
        routes = [dict(r) for r in await conn.fetch(SYSTEM_METRICS_SQL)]
    finally:
        await conn.close()
    return {"overviews": overviews, "progress": progress, "routes": routes, **views}


async def _analysis_loaded(settings: Settings, app: Any) -> None:
    """Wait (bounded) until the API's analysis store holds every learning event stored; if it does
    not, the funnel checks fail, saying what they saw."""
    conn = await connect(settings)
    try:
        stored = int(await conn.fetchval("SELECT count(*) FROM analysis_events"))
    finally:
        await conn.close()
    deadline = time.monotonic() + ANALYSIS_WAIT_S
    while len(app.state.analysis.store) < stored and time.monotonic() < deadline:  # noqa: ASYNC110  (no event to wait on)
        await asyncio.sleep(0.2)


async def _staff_views(settings: Settings, client: httpx.AsyncClient, data: Backfill) -> dict[str, Any]:
    """The pathways saved as funnels (what the staff dashboard shows) and their answers; the
    experiment's analysis."""
    staff = {"authorization": f"Bearer {token(settings, STAFF_USER, staff=True)}"}
    saved = "/api/analytics/analysis/saved-funnels"
    funnels: dict[str, Any] = {}
    for course in pathway.PATHWAYS.values():
        definition = pathway.funnel_definition(course, data.start, data.until)
        response = await client.post(
            f"{saved}/{course.name}/versions",
            content=definition.model_dump_json(),
            headers={**staff, "content-type": "application/json"},
        )
        response.raise_for_status()
        response = await client.get(f"{saved}/{course.name}", headers=staff)
        response.raise_for_status()
        funnels[course.name] = response.json()["result"]
    response = await client.get(f"/api/analytics/experiments/{experiment.KEY}/analysis", headers=staff)
    response.raise_for_status()
    return {"funnels": funnels, "experiment": response.json()}


async def run_demo(
    settings: Settings,
    *,
    students: int = 150,
    days: int = 60,
    seed: int = 7,
    console: Console | None = None,
    serve: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    screenshots: Path | None = None,
) -> DemoReport:
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
        span = history_span(days)
        spec = await start_experiment(settings, span[0])
        # An aggregator process consumes while the history plays (the playing takes this process's
        # core); this process's own aggregator then takes whatever is left, so nothing depends on it.
        helper = _aggregator_process(settings)
        try:
            data = await backfill(
                settings, console, people=students, days=days, seed=seed, span=span, spec=spec
            )
        finally:
            await asyncio.to_thread(_stop, helper)
        async with Aggregator(settings) as aggregator:
            with console.status("aggregating"):
                await aggregator.drain(timeout_s=120)
        events = await _stored_events(settings)
        answers = await read_back(settings, data)
        pseudonymizer = Pseudonymizer.from_settings(settings)
        ok = print_report(
            console, data.ledger, data.user_ids, data.days, answers, pseudonymizer, (data.start, data.until)
        )
        report = DemoReport(
            students=students,
            requests=data.ledger.requests,
            events_inserted=events,
            matches_ground_truth=ok,
            seconds=time.monotonic() - started,
        )
        console.print(
            f"[bold]{report.requests:,}[/] requests, [bold]{report.events_inserted:,}[/] events "
            f"aggregated in {report.seconds:.1f}s; every number above "
            f"{'matches' if ok else '[red]DOES NOT match[/]'} the simulation's own count."
        )
        if not ok and (serve or screenshots is not None):
            console.print("[red]not serving and no screenshots[/]: the numbers above differ from the truth")
        if ok and (serve or screenshots is not None):
            from .explore import explore

            await explore(settings, data, console, host=host, port=port, screenshots=screenshots, serve=serve)
        data.provider.shutdown()
    return report
