"""End to end, the app side: spawned app processes (like uvicorn workers) driving the simulated StudyIn
backend with their share of the students, through a batch processor into the real exporter or a no-op
one (the baseline), with one of the :data:`CARRIERS`. See end_to_end.py."""

from __future__ import annotations

import asyncio
import cProfile
import multiprocessing
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ..aggregator.cli.settings import Settings
from ..aggregator.devtools.simulation import Ledger, build_backend, simulate_students
from ..exporter import RedisStreamSpanExporter
from ..exporter.log_exporter import RedisStreamLogExporter, batch_log_processor
from ..instrumentation import LogRecordCarrier, SpanEventCarrier, StudyInTracker
from ..instrumentation.carriers import EventCarrier
from ..instrumentation.privacy import Pseudonymizer
from ..instrumentation.sessions import LearningSession


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


APP_PROCESSES = 2
"""App processes (like uvicorn workers), each with its share of the students."""
READY_TIMEOUT_S = 60.0
"""How long app and aggregator processes may take to start."""
QUEUE_SIZE = 1 << 20
"""Span queue of the batch processor: large enough that a burst never drops spans."""
SCHEDULE_DELAY_MS = 200

SPAN_EVENTS = "span-event carrier"
"""``SpanEventCarrier``: every event a span event (the baseline's carrier too)."""
LOG_CARRIER = "log carrier"
"""``LogRecordCarrier``: span events on request spans, log records elsewhere. In this traffic every event
happens in a request, so it measures the routing rule and an idle log pipeline."""
LOG_RECORDS = "log records everywhere"
"""Every event but ``session_end`` a log record, inside requests too: what an app whose events happen on
long-lived spans (WebSockets, background workers) pays (:class:`LogRecordsEverywhere`)."""
CARRIERS = (SPAN_EVENTS, LOG_CARRIER, LOG_RECORDS)


class NoOpSpanExporter(SpanExporter):
    """Takes every batch and does nothing (the app-side-alone baseline)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class NoOpLogExporter(LogRecordExporter):
    """Takes every batch of log records and does nothing."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class LogRecordsEverywhere(LogRecordCarrier):
    """The log carrier without its routing rule: every event but ``session_end`` becomes a log record."""

    def record(
        self, name: str, attributes: dict[str, Any], session: LearningSession | None, *, lifecycle: bool
    ) -> None:
        if lifecycle:
            super().record(name, attributes, session, lifecycle=lifecycle)
        else:
            self.emit(name, attributes, time.time_ns(), otel_context.get_current())


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


def _app(
    settings: Settings, exporter: SpanExporter, carrier_name: str, logs: LoggerProvider | None
) -> tuple[Any, TracerProvider]:
    pseudonymizer = Pseudonymizer.from_settings(settings)
    provider = TracerProvider(resource=Resource.create({"service.name": "studyin-backend-sim"}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE, schedule_delay_millis=SCHEDULE_DELAY_MS)
    )
    carrier: EventCarrier = SpanEventCarrier.create(provider)
    if logs is not None:
        kind = LogRecordsEverywhere if carrier_name == LOG_RECORDS else LogRecordCarrier
        carrier = kind.create(provider, logs)
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer, carrier=carrier)
    return build_backend(tracker, pseudonymizer, tracer_provider=provider), provider


def _log_provider(
    settings: Settings, carrier_name: str, real_exporter: bool
) -> tuple[LoggerProvider | None, Callable[[], int]]:
    """The log pipeline of the log carriers (the real logs exporter, or a no-op one; the spans' queue size
    and schedule delay) and a function of the log events its exporter dropped."""
    if carrier_name == SPAN_EVENTS:
        return None, lambda: 0
    provider = LoggerProvider(resource=Resource.create({"service.name": "studyin-backend-sim"}))
    options = {"max_queue_size": QUEUE_SIZE, "schedule_delay_millis": SCHEDULE_DELAY_MS}
    if not real_exporter:
        provider.add_log_record_processor(batch_log_processor(NoOpLogExporter(), **options))
        return provider, lambda: 0
    exporter = RedisStreamLogExporter(settings)
    provider.add_log_record_processor(batch_log_processor(exporter, **options))
    return provider, lambda: exporter.bus.spans_dropped


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
    carrier: str = SPAN_EVENTS,
) -> None:
    """One app process (like one uvicorn worker): its share of the students, its own providers.

    With ``profile`` (a path prefix), the event loop thread and the exporting thread are
    profiled into ``<profile>.prof`` and ``<profile>-exporter-thread.prof``.
    """
    try:
        real: SpanExporter = RedisStreamSpanExporter(settings) if real_exporter else NoOpSpanExporter()
        exporter = real if profile is None else ProfiledExporter(real, f"{profile}-exporter-thread.prof")
        logs, logs_dropped = _log_provider(settings, carrier, real_exporter)
        backend, provider = _app(settings, exporter, carrier, logs)
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
        if logs is not None:
            logs.force_flush(120_000)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile}.prof")
        dropped = int(getattr(real, "spans_dropped", 0))
        provider.shutdown()
        if logs is not None:
            dropped += logs_dropped()
            logs.shutdown()
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
        carrier: str = SPAN_EVENTS,
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
                    carrier,
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


async def run_traffic(
    settings: Settings,
    user_ids: list[str],
    traffic: Traffic,
    on_progress: Callable[[int], None],
    *,
    real_exporter: bool,
    before_go: Callable[[], Awaitable[None]] | None = None,
    profile: Path | None = None,
    carrier: str = SPAN_EVENTS,
) -> tuple[list[WorkerResult], float]:
    """Run the students in the app processes; returns their results and the seconds since the start."""
    apps = AppProcesses(
        settings,
        user_ids,
        traffic,
        real_exporter=real_exporter,
        count=min(APP_PROCESSES, len(user_ids)),
        profile=profile,
        carrier=carrier,
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


def merged_ledger(results: list[WorkerResult]) -> Ledger:
    ledger = Ledger()
    for result in results:
        ledger.merge(result.ledger)
    return ledger
