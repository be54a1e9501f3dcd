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
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ..aggregator.cli.settings import Settings, require
from ..aggregator.devtools.simulation import Ledger, build_backend, new_user_ids, simulate_students
from ..aggregator.storage.db import connect
from ..exporter import RedisStreamSpanExporter
from ..exporter.bus import group_lag, stream_keys
from ..instrumentation import StudyInTracker
from ..instrumentation.privacy import Pseudonymizer
from .framework import BenchContext, Measurement, at_least, bench, median

TARGET_EVENTS_PER_S = 30_000.0
PIPELINE_PARTS = ("app", "aggregators", "servers")
"""Where the CPU of an end-to-end run goes (see :class:`CpuMeter`)."""
AGGREGATOR_PROCESSES = 1
"""``studyin-analytics aggregator`` processes."""
APP_PROCESSES = 2
"""App processes (like uvicorn workers), each with its share of the students."""


@dataclass(frozen=True)
class Traffic:
    """What the simulated students do (see :func:`..aggregator.simulation.simulate_students`)."""

    name: str
    students: int
    sessions: int
    flashcards: int
    """Flashcard reviews per synced batch (one request; a progress event per card, XP per right answer)."""
    bulk_syncs: int = 0
    """Extra flashcard syncs per session (offline review sessions: event-dense requests)."""


def mixed_traffic(quick: bool) -> Traffic:
    """The StudyIn mix: sessions, materials, progress, flashcards, AI coach, streaks (~3.4 events/request)."""
    return Traffic("mixed", students=200 if quick else 2000, sessions=2, flashcards=20)


def bulk_traffic(quick: bool) -> Traffic:
    """Students syncing offline flashcard reviews in batches of 50 (~28 events/request)."""
    return Traffic("bulk sync", students=100 if quick else 500, sessions=1, flashcards=50, bulk_syncs=4)


QUEUE_SIZE = 1 << 20
"""Span queue of the batch processor: large enough that a burst never drops spans."""
SCHEDULE_DELAY_MS = 200
AGGREGATOR_COMMAND = (sys.executable, "-m", "studyin_analytics.aggregator.cli", "aggregator")
"""``studyin-analytics aggregator``, run by this interpreter (whatever the PATH holds)."""
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


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


class NoOpSpanExporter(SpanExporter):
    """Takes every batch and does nothing (the app-side-alone baseline)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class ProfiledExporter(SpanExporter):
    """Profiles the batch processor's thread while it exports (``bench --profile``)."""

    def __init__(self, inner: SpanExporter, path: str) -> None:
        self.inner = inner
        self.path = path
        self.profiler: cProfile.Profile | None = cProfile.Profile()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        profiler = self.profiler
        if profiler is None:
            return self.inner.export(spans)
        try:
            profiler.enable()
        except ValueError:  # another profiler owns this interpreter (Python >= 3.12)
            self.profiler = None
            return self.inner.export(spans)
        try:
            return self.inner.export(spans)
        finally:
            profiler.disable()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.inner.shutdown()
        if self.profiler is not None:
            self.profiler.dump_stats(self.path)


def _app(settings: Settings, exporter: SpanExporter) -> tuple[Any, TracerProvider]:
    pseudonymizer = Pseudonymizer.from_settings(settings)
    provider = TracerProvider(resource=Resource.create({"service.name": "studyin-backend-sim"}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE, schedule_delay_millis=SCHEDULE_DELAY_MS)
    )
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
    return build_backend(tracker, pseudonymizer, tracer_provider=provider), provider


@dataclass
class WorkerResult:
    """What one app process reports back."""

    ledger: Ledger
    seconds: float
    """From the start signal until its spans were flushed."""
    cpu: float
    spans_dropped: int = 0
    error: str | None = None


def app_worker(
    settings: Settings,
    user_ids: list[str],
    traffic: Traffic,
    real_exporter: bool,
    go: Any,
    ready: Any,
    results: Any,
    steps: Any,
    profile: str | None = None,
) -> None:
    """One app process (like one uvicorn worker): its share of the students, its own provider.

    With ``profile`` (a path prefix), the event loop thread and the exporting thread are
    profiled into ``<profile>.prof`` and ``<profile>-exporter-thread.prof``.
    """
    try:
        real: SpanExporter = RedisStreamSpanExporter(settings) if real_exporter else NoOpSpanExporter()
        exporter = real if profile is None else ProfiledExporter(real, f"{profile}-exporter-thread.prof")
        backend, provider = _app(settings, exporter)
    except Exception as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        return
    ready.put(None)
    if not go.wait(READY_TIMEOUT_S):
        return
    pending = 0

    def step() -> None:
        nonlocal pending
        pending += 1
        if pending >= 50:
            with steps.get_lock():
                steps.value += pending
            pending = 0

    cpu = time.process_time()
    started = time.perf_counter()
    profiler = cProfile.Profile() if profile is not None else None
    try:
        if profiler is not None:
            profiler.enable()
        ledger = asyncio.run(
            simulate_students(
                backend,
                user_ids,
                sessions_per_student=traffic.sessions,
                driver="asgi",
                flashcards=traffic.flashcards,
                bulk_syncs=traffic.bulk_syncs,
                coach=hasattr(StudyInTracker, "ai_coach_interaction"),
                on_step=step,
            )
        )
        provider.force_flush(120_000)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile}.prof")
        dropped = int(getattr(real, "spans_dropped", 0))
        provider.shutdown()
        results.put(WorkerResult(ledger, seconds, time.process_time() - cpu, dropped))
    except Exception as exc:
        results.put(WorkerResult(Ledger(), 0.0, 0.0, error=f"{type(exc).__name__}: {exc}"))


class AppProcesses:
    """The app side as ``count`` processes sharing the students (spawned, so no state is inherited)."""

    def __init__(
        self,
        settings: Settings,
        user_ids: list[str],
        traffic: Traffic,
        *,
        real_exporter: bool,
        count: int,
        profile: Path | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.go = context.Event()
        self.ready = context.Queue()
        self.results = context.Queue()
        self.steps = context.Value("q", 0)
        self.processes = [
            context.Process(
                target=app_worker,
                args=(
                    settings,
                    user_ids[i::count],
                    traffic,
                    real_exporter,
                    self.go,
                    self.ready,
                    self.results,
                    self.steps,
                    None if profile is None else str(profile.with_name(f"{profile.stem}-{i}")),
                ),
                name=f"studyin-bench-app-{i}",
                daemon=True,
            )
            for i in range(count)
        ]

    async def start(self) -> None:
        """Start the processes and wait until each has built its app (imports are not timed)."""
        for process in self.processes:
            process.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = len(self.processes)
        while waiting:
            try:
                error = await asyncio.to_thread(self.ready.get, True, 0.2)
            except queue.Empty:
                if any(p.exitcode is not None for p in self.processes):
                    raise RuntimeError("an app process exited while starting (see its output)") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app processes not ready after {READY_TIMEOUT_S:.0f}s") from None
                continue
            if error is not None:
                raise RuntimeError(f"an app process could not start: {error}")
            waiting -= 1

    async def run(self, on_progress: Callable[[int], None]) -> list[WorkerResult]:
        """Let them go; returns every process's result (raises if one failed)."""
        self.go.set()
        results: list[WorkerResult] = []
        while len(results) < len(self.processes):
            try:
                results.append(self.results.get_nowait())
                continue
            except queue.Empty:
                pass
            on_progress(int(self.steps.value))
            if all(p.exitcode is not None for p in self.processes) and self.results.empty():
                raise RuntimeError("an app process died without reporting (see its output)")
            await asyncio.sleep(0.05)
        on_progress(int(self.steps.value))
        failed = [r.error for r in results if r.error]
        if failed:
            raise RuntimeError(f"app process failed: {failed[0]}")
        return results

    async def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)


async def _traffic(
    settings: Settings,
    user_ids: list[str],
    traffic: Traffic,
    on_progress: Callable[[int], None],
    *,
    real_exporter: bool,
    before_go: Callable[[], Awaitable[None]] | None = None,
    profile: Path | None = None,
) -> tuple[list[WorkerResult], float]:
    """Run the students in the app processes; returns their results and the seconds since the start."""
    apps = AppProcesses(
        settings,
        user_ids,
        traffic,
        real_exporter=real_exporter,
        count=min(APP_PROCESSES, len(user_ids)),
        profile=profile,
    )
    try:
        await apps.start()
        if before_go is not None:
            await before_go()
        started = time.perf_counter()
        results = await apps.run(on_progress)
        return results, started
    finally:
        await apps.stop()


def _merged(results: list[WorkerResult]) -> Ledger:
    ledger = Ledger()
    for result in results:
        ledger.merge(result.ledger)
    return ledger


def aggregator_env(settings: Settings) -> dict[str, str]:
    """Environment for a ``studyin-analytics aggregator`` child that shares ``settings``."""
    require(settings.redis_url, "redis_url")
    require(settings.postgres_url, "postgres_url")
    env = {**os.environ, **settings.environment(), **settings.environment("consumer_group", "pseudonym_keys")}
    if settings.pseudonym_keys:
        env["STUDYIN_ANALYTICS_PSEUDONYM_KEY_ID"] = settings.active_key_id or ""
    return env


class AggregatorProcesses:
    """``studyin-analytics aggregator`` children, stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, settings: Settings, count: int, log_dir: Path, profile: Path | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self.names = [f"{settings.consumer_name}-{i}" for i in range(count)]
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = aggregator_env(self.settings)
        for index, name in enumerate(self.names):
            command = [*AGGREGATOR_COMMAND, "--consumer-name", name]
            if self.profile is not None:  # cProfile writes its file when SIGTERM ends the run cleanly
                path = self.profile.with_name(f"{self.profile.stem}-{index}.prof")
                command[1:1] = ["-m", "cProfile", "-o", str(path)]  # python -m cProfile -o F -m ...
            with open(self.log_dir / f"{name}.log", "wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def check(self) -> None:
        for name, process in zip(self.names, self.processes, strict=True):
            if process.poll() is not None:
                raise RuntimeError(
                    f"aggregator {name} exited with code {process.returncode}: {self.log_tail(name)}"
                )

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the running aggregators."""
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(process.pid).cpu_times()
                total += times.user + times.system
        return total

    def client_ports(self) -> set[int]:
        """Local TCP ports of the aggregators' connections (to find their PostgreSQL backends)."""
        ports: set[int] = set()
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                for connection in psutil.Process(process.pid).net_connections(kind="tcp"):
                    if connection.laddr:
                        ports.add(int(connection.laddr.port))
        return ports

    def log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            lines = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:])
        return ""

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, max(deadline - time.monotonic(), 0.1))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)


_CLIENT_PORT = re.compile(r"\((\d+)\)")


class CpuMeter:
    """CPU seconds since creation: this (coordinating) process, the aggregators, the servers and
    the whole machine (busy); the app processes report their own.

    ``servers`` counts the Redis processes, PostgreSQL's own background processes, and only
    those PostgreSQL backends that serve the aggregators' connections, so other clients of a
    shared PostgreSQL are left out (other clients of a shared Redis are not).
    """

    def __init__(self, aggregators: AggregatorProcesses | None = None) -> None:
        self.aggregators = aggregators
        self.app = time.process_time()
        self.children = aggregators.cpu_seconds() if aggregators else 0.0
        self.machine = self._busy()
        self.ports = aggregators.client_ports() if aggregators else set()
        self.servers = self._servers()

    def _servers(self) -> dict[int, float]:
        """CPU seconds of each server process that works for this run, by pid."""
        out: dict[int, float] = {}
        for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            name = process.info["name"] or ""
            times = process.info["cpu_times"]
            if times is None or not name.startswith(("postgres", "redis-server")):
                continue
            if name.startswith("postgres"):
                client = _CLIENT_PORT.search(" ".join(process.info["cmdline"] or ()))
                if client is not None and int(client.group(1)) not in self.ports:
                    continue  # a backend serving somebody else
            out[process.pid] = times.user + times.system
        return out

    def _servers_since(self) -> float:
        """Server CPU since creation (processes that ended meanwhile are not counted)."""
        now = self._servers()
        return sum(max(cpu - self.servers.get(pid, 0.0), 0.0) for pid, cpu in now.items())

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def read(self) -> dict[str, float]:
        return {
            "bench": time.process_time() - self.app,
            "aggregators": (self.aggregators.cpu_seconds() if self.aggregators else 0.0) - self.children,
            "servers": self._servers_since(),
            "machine": self._busy() - self.machine,
        }


async def _group_state(client: aioredis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    with contextlib.suppress(aioredis.ResponseError):
        for entry in await client.xinfo_groups(stream):
            name = entry["name"]
            if (name.decode() if isinstance(name, bytes) else name) == group:
                return dict(entry)
    return None


async def wait_ready(client: aioredis.Redis, settings: Settings, aggregators: AggregatorProcesses) -> None:
    """Until every aggregator has joined the group (it shows up as a consumer once it reads)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    stream = stream_keys(settings)[0]
    wanted = set(aggregators.names)
    while time.monotonic() < deadline:
        aggregators.check()
        if await _group_state(client, stream, settings.consumer_group) is not None:
            consumers = await client.xinfo_consumers(stream, settings.consumer_group)
            names = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in consumers}
            if wanted <= names:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"aggregators not consuming after {READY_TIMEOUT_S:.0f}s")


async def drained(client: aioredis.Redis, settings: Settings) -> bool:
    """True when the group has read and acknowledged every entry of every stream."""
    for stream in stream_keys(settings):
        if not await client.exists(stream):
            continue
        lag = await group_lag(client, stream, settings.consumer_group)
        if lag is None or lag.behind:
            return False
    return True


async def check_totals(settings: Settings, ledger: Ledger) -> list[str]:
    """Differences between PostgreSQL and the ledger (empty when every total matches)."""
    problems: list[str] = []
    pseudonymizer = Pseudonymizer.from_settings(settings)
    conn = await connect(settings)
    try:
        rows = await conn.fetch("SELECT event_type, count(*) AS n FROM analytics_events GROUP BY 1")
        got = {r["event_type"]: int(r["n"]) for r in rows}
        for event_type in sorted(set(got) | set(ledger.events)):
            want = ledger.events.get(event_type, 0)
            if got.get(event_type, 0) != want:
                problems.append(f"{event_type}: {got.get(event_type, 0)} rows, ledger {want}")
        daily = await conn.fetch(
            "SELECT user_hash, sum(sessions) AS sessions, sum(materials_viewed) AS viewed, "
            "sum(materials_completed) AS completed, sum(xp) AS xp "
            "FROM daily_activity_summary GROUP BY user_hash"
        )
    finally:
        await conn.close()
    by_user = {
        r["user_hash"]: (int(r["sessions"]), int(r["viewed"]), int(r["completed"]), int(r["xp"]))
        for r in daily
    }
    users = set(ledger.sessions) | set(ledger.materials_viewed) | set(ledger.xp)
    wrong = 0
    for user in users:
        expected = (
            ledger.sessions.get(user, 0),
            ledger.materials_viewed.get(user, 0),
            ledger.materials_completed.get(user, 0),
            ledger.xp.get(user, 0),
        )
        if by_user.pop(pseudonymizer.pseudonymize(user), (0, 0, 0, 0)) != expected:
            wrong += 1
    if wrong:
        problems.append(
            f"daily_activity_summary differs from the ledger for {wrong} of {len(users)} students"
        )
    if by_user:
        problems.append(f"daily_activity_summary has {len(by_user)} users the simulation does not know")
    return problems


async def _pipeline(
    ctx: BenchContext,
    user_ids: list[str],
    traffic: Traffic,
    on_progress: Callable[[int], None],
    *,
    profile: bool = False,
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

            results, started = await _traffic(
                settings,
                user_ids,
                traffic,
                on_progress,
                real_exporter=True,
                before_go=before_go,
                profile=app_profile,
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
    ledger = _merged(results)
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
        run.errors.append(f"the exporter dropped {run.spans_dropped} spans")
    run.errors.extend(await check_totals(settings, ledger))
    return run


async def _app_alone(
    ctx: BenchContext, user_ids: list[str], traffic: Traffic, on_progress: Callable[[int], None]
) -> Run:
    meters: list[CpuMeter] = []

    async def before_go() -> None:
        meters.append(CpuMeter())

    results, started = await _traffic(
        ctx.settings, user_ids, traffic, on_progress, real_exporter=False, before_go=before_go
    )
    seconds = time.perf_counter() - started
    cpu = meters[0].read()
    cpu["app"] = sum(r.cpu for r in results)
    return Run(seconds=seconds, app_seconds=seconds, ledger=_merged(results), cpu=cpu)


@bench("end_to_end")
async def end_to_end(ctx: BenchContext) -> list[Measurement]:
    rows: list[Measurement] = []
    # --quick proves the command works within its minute: the StudyIn mix only.
    mixes = [mixed_traffic(ctx.quick)] if ctx.quick else [mixed_traffic(False), bulk_traffic(False)]
    for traffic in mixes:
        baselines, pipelines = await _measure(ctx, traffic)
        rows.extend(_rows(traffic, baselines, pipelines, main=traffic.name == "mixed"))
    return rows


async def _measure(ctx: BenchContext, traffic: Traffic) -> tuple[list[Run], list[Run]]:
    """Alternating pairs of runs (app alone, whole pipeline) of the same students."""
    repeats = ctx.scale(3, 1)
    user_ids = new_user_ids(traffic.students)
    baselines: list[Run] = []
    pipelines: list[Run] = []
    requests: float | None = None
    for repeat in range(repeats):
        for kind in ("app alone", "pipeline"):
            label = f"end_to_end {traffic.name} {repeat + 1}/{repeats}: {traffic.students} students, {kind}"
            async with ctx.task(label, total=requests) as task:

                def step(done: int, task: Any = task) -> None:
                    ctx.progress.update(task, completed=done)

                if kind == "app alone":
                    run = await _app_alone(ctx, user_ids, traffic, step)
                    baselines.append(run)
                    requests = float(run.ledger.requests)
                else:
                    # With --profile, the first pipeline run of the mixed traffic is profiled (slower).
                    profile = repeat == 0 and traffic.name == "mixed"
                    run = await _pipeline(ctx, user_ids, traffic, step, profile=profile)
                    pipelines.append(run)
    return baselines, pipelines


def _rows(traffic: Traffic, baselines: list[Run], pipelines: list[Run], *, main: bool) -> list[Measurement]:
    last = pipelines[-1].ledger
    cores = psutil.cpu_count() or 1
    suffix = "" if main else f", {traffic.name} traffic"
    alone = "app alone, no-op exporter" + ("" if main else f", {traffic.name} traffic")

    def usage(run: Run) -> str:
        return ", ".join(f"{k} {v / run.seconds:.2f}" for k, v in run.cpu.items())

    def cost(run: Run) -> str:
        return ", ".join(f"{part} {run.cpu_per_event_us(part):.1f} µs" for part in PIPELINE_PARTS)

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
