"""LRS forwarder: statements per second into a real LRS, against the LRS's own intake of the same statements.

Same run, same count, same batches of 100: the **baseline** posts the pre-built statements (the JSON bodies
the forwarder would send, serialised beforehand) back to back: what the LRS takes at most from one client.
The **value** is the forwarder end to end: the same events as bus entries (100 spans each), read by its
consumer group, decoded, mapped, batched, POSTed, each batch acknowledged. Each run gets a fresh LRS,
since Ralph's file-system backend slows as its file grows; runs alternate (baseline first, then the
forwarder, then again).

The LRS is Ralph 5.1.0 from the test harness (``tests/support/lrs/ralph.py``: its own cached virtualenv
and the launcher-side append fix), so this benchmark runs from a checkout of the repository.

Target (issue 22): the forwarder at least 0.8x the LRS's own intake.

Run alone: ``studyin-analytics bench --only lrs [--quick]``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ..aggregator.cli.settings import Settings
from ..aggregator.consumer.mapping import rows_from_span
from ..aggregator.lrs.batches import plan_batches
from ..aggregator.lrs.forwarder import Forwarder
from ..aggregator.lrs.settings import LrsSettings
from ..aggregator.lrs.xapi import StatementMapper, XapiConfig
from ..exporter.bus import stream_keys
from ..exporter.wire import encode_readable_spans, entry_fields
from ..instrumentation import Pseudonymizer, StudyInTracker, events
from ..instrumentation.privacy import PrivacyGuard
from .framework import BenchContext, Measurement, at_least, bench, median

TARGET_RATIO = 0.8
BATCH = 100
SPANS_PER_ENTRY = 100
HARNESS = Path(__file__).resolve().parents[1] / "tests" / "support" / "lrs" / "ralph.py"
CONFIG = XapiConfig(iri_base="https://xapi.studyin.example", home_page="https://studyin.example")


def _harness() -> ModuleType:
    """The test harness's Ralph module (venv creation, server start), loaded from the checkout."""
    if not HARNESS.exists():
        raise RuntimeError(f"the LRS benchmark needs the repository's Ralph harness at {HARNESS}")
    spec = importlib.util.spec_from_file_location("studyin_bench_ralph", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _entries(count: int) -> list[dict[Any, Any]]:
    """``count`` learning events (views, progress, XP, streaks of 50 learners) as bus entries."""
    lrs = Pseudonymizer({"l1": b"bench-lrs-key-0123456789"}, "l1")
    pseudonymizer = Pseudonymizer({"b1": b"bench-analytics-key-0123456789"}, "b1", lrs=lrs)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
    for i in range(count):
        user = f"learner-{i % 50}"
        if i % 2:
            tracker.emit(events.MaterialView, user_id=user, material_id=f"m-{i}", material_type="pdf")
        else:
            tracker.emit(
                events.MaterialProgress,
                user_id=user,
                material_id=f"m-{i}",
                material_type="video",
                progress=0.5,
            )
    spans = exporter.get_finished_spans()
    guard = PrivacyGuard(pseudonymizer)
    chunks = [spans[i : i + SPANS_PER_ENTRY] for i in range(0, len(spans), SPANS_PER_ENTRY)]
    return [entry_fields(encode_readable_spans(chunk, guard), len(chunk)) for chunk in chunks]


def _bodies(entries: list[dict[Any, Any]]) -> list[bytes]:
    """The POST bodies the forwarder sends for ``entries`` (mapped and serialised beforehand)."""
    from ..exporter.wire import decode_entry

    rows = [row for entry in entries for record in decode_entry(entry) for row in rows_from_span(record)]
    plan = plan_batches([("1-0", rows)], StatementMapper(CONFIG), max_statements=BATCH)
    return [batch.body() for batch in plan.batches]


async def _intake(server: Any, bodies: list[bytes]) -> float:
    async with httpx.AsyncClient(auth=server.auth, timeout=120) as client:
        started = time.perf_counter()
        for body in bodies:
            answer = await client.post(
                server.statements_url,
                content=body,
                headers={"Content-Type": "application/json", "X-Experience-API-Version": "1.0.3"},
            )
            if answer.status_code != 200:
                raise RuntimeError(f"the LRS answered {answer.status_code}: {answer.text[:200]}")
        return time.perf_counter() - started


async def _forwarded(settings: Settings, server: Any, entries: list[dict[Any, Any]], count: int) -> float:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        (stream,) = stream_keys(settings)
        for entry in entries:
            client.xadd(stream, entry)
    finally:
        client.close()
    lrs = LrsSettings.model_validate(
        {
            **settings.model_dump(),
            "lrs_url": server.url + "/xAPI",
            "lrs_username": server.username,
            "lrs_password": server.password,
            "lrs_iri_base": CONFIG.iri_base,
            "lrs_home_page": CONFIG.home_page,
            "lrs_catch_up": False,
            "lrs_batch_statements": BATCH,
        }
    )
    async with Forwarder(lrs) as forwarder:
        started = time.perf_counter()
        totals = await forwarder.drain(600)
        seconds = time.perf_counter() - started
    if totals.statements_delivered != count or totals.rejected:
        raise RuntimeError(f"forwarded {totals.statements_delivered} of {count}, {totals.rejected} rejected")
    return seconds


@bench("lrs")
async def lrs_forwarder(ctx: BenchContext) -> list[Measurement]:
    harness = _harness()
    python = await asyncio.to_thread(harness.ensure_venv)
    count = ctx.scale(5000, 500)
    entries = _entries(count)
    bodies = _bodies(entries)
    intake: list[float] = []
    forwarded: list[float] = []
    async with ctx.task("LRS intake vs forwarder", total=2 * ctx.repeat_count) as task:
        for _ in range(ctx.repeat_count):
            for kind in ("intake", "forwarder"):
                with tempfile.TemporaryDirectory(prefix="bench-ralph-") as workdir:
                    server = harness.RalphServer(python, Path(workdir))
                    await asyncio.to_thread(server.start)
                    try:
                        if kind == "intake":
                            intake.append(count / await _intake(server, bodies))
                        else:
                            settings = ctx.isolated_settings("lrs")
                            forwarded.append(count / await _forwarded(settings, server, entries, count))
                    finally:
                        await asyncio.to_thread(server.stop)
                ctx.advance(task)
    value, baseline = median(forwarded), median(intake)
    target, met = at_least(value / baseline, TARGET_RATIO, "x the LRS's own intake")
    return [
        Measurement(
            "LRS forwarder statements/s",
            value,
            "statements/s",
            baseline=baseline,
            baseline_name="LRS (Ralph) own intake, same statements",
            target=target,
            met=met,
            notes=f"{count} statements, batches of {BATCH}, a fresh Ralph 5.1.0 (file backend) per run",
            samples=forwarded,
        )
    ]
