"""End to end: simulated StudyIn traffic through exporter, Redis, aggregator and PostgreSQL.

Thousands of simulated students (:mod:`..aggregator.simulation`) use the instrumented
simulated StudyIn backend at once; the app side runs as :data:`APP_PROCESSES` spawned
processes (like uvicorn workers, each with its share of the students, calling the ASGI app
directly). Their tracker calls and HTTP server spans go through a ``BatchSpanProcessor`` into
the real :class:`~..exporter.RedisStreamSpanExporter`, and separate ``studyin-analytics
aggregator`` processes roll the bus into PostgreSQL, so every part can use every core.
The clock runs from the first request until the consumer group has acknowledged the last
entry; afterwards the rows are counted against the simulation's ledger, by event type and
per student, and any difference fails the measure.

Baseline: the same traffic (same students, same seed) with a no-op exporter, i.e. the app
side alone; the ratio is the share of the app's own event rate that survives the whole
pipeline on this machine.

Two traffic mixes: the StudyIn mix (the headline, ~3.4 events per request, where the web
framework's cost per request dominates) and bulk flashcard syncs (~28 events per request),
which shows what the pipeline itself sustains when the app side is cheap per event.

Carriers (issue 16): the headline runs use the span-event carrier; the StudyIn mix also runs through
the whole pipeline with the log carrier (its routing rule; every event of this traffic happens in a
request) and with log records everywhere (every event but ``session_end`` a log record, through the
logs exporter), each against the same no-op baseline, alternated with it and with exact totals.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from ..aggregator.cli.settings import require
from ..aggregator.devtools.simulation import Ledger, new_user_ids
from .end_to_end_apps import (
    APP_PROCESSES,
    CARRIERS,
    LOG_CARRIER,
    LOG_RECORDS,
    SPAN_EVENTS,
    Traffic,
    bulk_traffic,
    merged_ledger,
    mixed_traffic,
    run_traffic,
)
from .end_to_end_pipeline import AggregatorProcesses, CpuMeter, check_totals, drained, wait_ready
from .framework import BenchContext, Measurement, at_least, bench, median

TARGET_EVENTS_PER_S = 30_000.0
PIPELINE_PARTS = ("app", "aggregators", "servers")
"""Where the CPU of an end-to-end run goes (see :class:`CpuMeter`)."""
AGGREGATOR_PROCESSES = 1
"""``studyin-analytics aggregator`` processes."""


@dataclass
class Run:
    """One timed pass of the traffic."""

    seconds: float
    app_seconds: float
    ledger: Ledger
    drain_seconds: float = 0.0
    spans_dropped: int = 0
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds over the run: ``app`` (the app processes), ``aggregators``, ``servers`` (Redis and
    PostgreSQL processes), ``bench`` (the coordinating process), ``machine`` (everything busy,
    other users included)."""

    @property
    def events_per_s(self) -> float:
        return self.ledger.total_events / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.ledger.requests / self.seconds

    @property
    def app_events_per_s(self) -> float:
        return self.ledger.total_events / self.app_seconds

    def cpu_per_event_us(self, *parts: str) -> float:
        """CPU microseconds per event spent by ``parts`` (keys of :attr:`cpu`)."""
        return sum(self.cpu.get(part, 0.0) for part in parts) * 1e6 / max(self.ledger.total_events, 1)


async def _pipeline(
    ctx: BenchContext,
    user_ids: list[str],
    traffic: Traffic,
    on_progress: Callable[[int], None],
    *,
    profile: bool = False,
    carrier: str = SPAN_EVENTS,
) -> Run:
    settings = await ctx.migrated_settings("e2e")
    client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"))
    meters: list[CpuMeter] = []
    app_profile = ctx.profile_path("end_to_end-app") if profile else None
    aggregator_profile = ctx.profile_path("end_to_end-aggregator") if profile else None
    with tempfile.TemporaryDirectory(prefix="studyin-bench-") as log_dir:
        aggregators = AggregatorProcesses(settings, AGGREGATOR_PROCESSES, Path(log_dir), aggregator_profile)
        try:
            aggregators.start()

            async def before_go() -> None:  # the aggregators boot while the app processes do
                await wait_ready(client, settings, aggregators)
                meters.append(CpuMeter(aggregators))

            results, started = await run_traffic(
                settings,
                user_ids,
                traffic,
                on_progress,
                real_exporter=True,
                before_go=before_go,
                profile=app_profile,
                carrier=carrier,
            )
            flushed = time.perf_counter()
            deadline = flushed + ctx.scale(300, 60)
            while not await drained(client, settings):
                aggregators.check()
                if time.perf_counter() > deadline:
                    raise TimeoutError("the aggregators did not catch up with the bus in time")
                await asyncio.sleep(0.02)
            finished = time.perf_counter()
            cpu = meters[0].read()
        finally:
            await aggregators.stop()
            await client.aclose()
    ledger = merged_ledger(results)
    cpu["app"] = sum(r.cpu for r in results)
    run = Run(
        seconds=finished - started,
        app_seconds=flushed - started,
        ledger=ledger,
        drain_seconds=finished - flushed,
        spans_dropped=sum(r.spans_dropped for r in results),
        cpu=cpu,
    )
    if run.spans_dropped:
        run.errors.append(f"the exporters dropped {run.spans_dropped} spans or log events")
    run.errors.extend(await check_totals(settings, ledger))
    return run


async def _app_alone(
    ctx: BenchContext, user_ids: list[str], traffic: Traffic, on_progress: Callable[[int], None]
) -> Run:
    meters: list[CpuMeter] = []

    async def before_go() -> None:
        meters.append(CpuMeter())

    results, started = await run_traffic(
        ctx.settings, user_ids, traffic, on_progress, real_exporter=False, before_go=before_go
    )
    seconds = time.perf_counter() - started
    cpu = meters[0].read()
    cpu["app"] = sum(r.cpu for r in results)
    return Run(seconds=seconds, app_seconds=seconds, ledger=merged_ledger(results), cpu=cpu)


@bench("end_to_end")
async def end_to_end(ctx: BenchContext) -> list[Measurement]:
    rows: list[Measurement] = []
    # --quick proves the command works within its minute: the StudyIn mix only.
    mixes = [mixed_traffic(ctx.quick)] if ctx.quick else [mixed_traffic(False), bulk_traffic(False)]
    # The carriers run on the StudyIn mix; --quick keeps the one that exercises the log pipeline.
    carriers = (SPAN_EVENTS, LOG_RECORDS) if ctx.quick else CARRIERS
    for traffic in mixes:
        main = traffic.name == "mixed"
        baselines, pipelines = await _measure(ctx, traffic, carriers if main else (SPAN_EVENTS,))
        rows.extend(_rows(traffic, baselines, pipelines.pop(SPAN_EVENTS), main=main))
        rows.extend(
            row for carrier, runs in pipelines.items() for row in _carrier_rows(carrier, baselines, runs)
        )
    return rows


async def _measure(
    ctx: BenchContext, traffic: Traffic, carriers: tuple[str, ...]
) -> tuple[list[Run], dict[str, list[Run]]]:
    """Alternating rounds of runs of the same students: app alone, then the pipeline with each carrier."""
    repeats = ctx.scale(3, 1)
    user_ids = new_user_ids(traffic.students)
    baselines: list[Run] = []
    pipelines: dict[str, list[Run]] = {carrier: [] for carrier in carriers}
    requests: float | None = None
    for repeat in range(repeats):
        for kind in ("app alone", *carriers):
            label = f"end_to_end {traffic.name} {repeat + 1}/{repeats}: {traffic.students} students, {kind}"
            async with ctx.task(label, total=requests) as task:

                def step(done: int, task: Any = task) -> None:
                    ctx.progress.update(task, completed=done)

                if kind == "app alone":
                    run = await _app_alone(ctx, user_ids, traffic, step)
                    baselines.append(run)
                    requests = float(run.ledger.requests)
                else:
                    # With --profile, the first span-carrier run of the mixed traffic is profiled (slower).
                    profile = repeat == 0 and traffic.name == "mixed" and kind == SPAN_EVENTS
                    run = await _pipeline(ctx, user_ids, traffic, step, profile=profile, carrier=kind)
                    pipelines[kind].append(run)
    return baselines, pipelines


def _cores_busy(run: Run) -> str:
    return ", ".join(f"{k} {v / run.seconds:.2f}" for k, v in run.cpu.items())


def _cpu_cost(run: Run) -> str:
    return ", ".join(f"{part} {run.cpu_per_event_us(part):.1f} µs" for part in PIPELINE_PARTS)


def _rows(traffic: Traffic, baselines: list[Run], pipelines: list[Run], *, main: bool) -> list[Measurement]:
    last = pipelines[-1].ledger
    cores = psutil.cpu_count() or 1
    suffix = "" if main else f", {traffic.name} traffic"
    alone = "app alone, no-op exporter" + ("" if main else f", {traffic.name} traffic")

    usage, cost = _cores_busy, _cpu_cost
    ceiling = cores * 1e6 / max(pipelines[-1].cpu_per_event_us(*PIPELINE_PARTS), 1e-9)
    errors = sorted({e for run in pipelines for e in run.errors})
    error = "; ".join(errors) if errors else None
    value = median([r.events_per_s for r in pipelines])
    target, met = at_least(value, TARGET_EVENTS_PER_S, "events/s")
    shape = (
        f"{traffic.name} traffic: {traffic.students} concurrent students x {traffic.sessions} sessions; "
        f"{last.requests} requests and {last.total_events} events per run "
        f"({last.total_events / last.requests:.1f} events/request); {APP_PROCESSES} app and "
        f"{AGGREGATOR_PROCESSES} aggregator process(es); exact totals checked "
        f"({'MISMATCH' if error else 'all equal'}); cores busy (of {cores}) in the last pipeline run: "
        f"{usage(pipelines[-1])}; app alone: {usage(baselines[-1])}"
    )
    return [
        Measurement(
            name=f"end_to_end throughput{suffix}",
            value=value,
            unit="events/s",
            baseline=median([r.events_per_s for r in baselines]),
            baseline_name=alone,
            target=target if main else None,
            met=(met and error is None) if main else (False if error else None),
            notes=shape,
            samples=[r.events_per_s for r in pipelines],
            error=error,
        ),
        Measurement(
            name=f"end_to_end requests{suffix}",
            value=median([r.requests_per_s for r in pipelines]),
            unit="req/s",
            baseline=median([r.requests_per_s for r in baselines]),
            baseline_name=alone,
            notes="instrumented API requests per second over the same runs",
            samples=[r.requests_per_s for r in pipelines],
            headline=False,
        ),
        Measurement(
            name=f"end_to_end app side with exporter{suffix}",
            value=median([r.app_events_per_s for r in pipelines]),
            unit="events/s",
            baseline=median([r.events_per_s for r in baselines]),
            baseline_name=alone,
            notes="events/s the app produced while the pipeline ran (until its spans were flushed)",
            samples=[r.app_events_per_s for r in pipelines],
            headline=False,
        ),
        Measurement(
            name=f"end_to_end CPU per event{suffix}",
            value=median([r.cpu_per_event_us(*PIPELINE_PARTS) for r in pipelines]),
            unit="µs",
            baseline=median([r.cpu_per_event_us("app") for r in baselines]),
            baseline_name=alone,
            notes=(
                "CPU of app processes + aggregators + Redis/PostgreSQL processes per event; "
                f"{cost(pipelines[-1])}; {cores} cores / this cost = {ceiling:,.0f} events/s, the ceiling "
                "of the whole pipeline on this machine"
            ),
            samples=[r.cpu_per_event_us(*PIPELINE_PARTS) for r in pipelines],
            headline=False,
        ),
        Measurement(
            name=f"end_to_end drain tail{suffix}",
            value=median([r.drain_seconds for r in pipelines]),
            unit="s",
            notes="from the app's last flushed span until the group acknowledged the last entry",
            samples=[r.drain_seconds for r in pipelines],
            headline=False,
        ),
    ]


def _carrier_rows(carrier: str, baselines: list[Run], pipelines: list[Run]) -> list[Measurement]:
    """The StudyIn mix through the whole pipeline with another carrier, against the same baseline."""
    errors = sorted({e for run in pipelines for e in run.errors})
    error = "; ".join(errors) if errors else None
    last = pipelines[-1]
    logs = "the routing rule" if carrier == LOG_CARRIER else "every event but session_end a log record"
    return [
        Measurement(
            name=f"end_to_end throughput, {carrier}",
            value=median([r.events_per_s for r in pipelines]),
            unit="events/s",
            baseline=median([r.events_per_s for r in baselines]),
            baseline_name="app alone, no-op exporter",
            met=False if error else None,
            notes=(
                f"the StudyIn mix ({last.ledger.total_events} events per run) with the {carrier} ({logs}), "
                f"alternated with the span-event carrier's runs; exact totals checked "
                f"({'MISMATCH' if error else 'all equal'}); cores busy: {_cores_busy(last)}"
            ),
            samples=[r.events_per_s for r in pipelines],
            error=error,
            headline=False,
        ),
        Measurement(
            name=f"end_to_end CPU per event, {carrier}",
            value=median([r.cpu_per_event_us(*PIPELINE_PARTS) for r in pipelines]),
            unit="µs",
            baseline=median([r.cpu_per_event_us("app") for r in baselines]),
            baseline_name="app alone, no-op exporter",
            notes=f"CPU of app processes + aggregators + Redis/PostgreSQL per event; {_cpu_cost(last)}",
            samples=[r.cpu_per_event_us(*PIPELINE_PARTS) for r in pipelines],
            headline=False,
        ),
    ]
