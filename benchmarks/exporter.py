"""Exporter: what the Redis stream exporter costs the app per span, against the stock OTLP/HTTP path.

Same run, same spans (512-span batches of attribute-rich spans: 6 attributes and one event
with 5 attributes, like a StudyIn domain event):

* **encode**: the bus wire format (msgpack, privacy guard included) against OTLP protobuf
  (``encode_spans(...).SerializeToString()``), µs per span: the numbers behind wire.py;
* **export call**: ``RedisStreamSpanExporter.export(batch)`` (guard + encode + one ``XADD``
  round trip) against the stock ``OTLPSpanExporter.export(batch)`` sending to the
  ``studyin-analytics gateway`` (a separate process, so another core), which answers after
  its own ``XADD``. The cost to the app is the CPU time of the exporting thread per span
  (waiting on a socket is not CPU, and it stays meaningful on a busy shared machine); the
  wall time per span (how long the batch processor's worker is blocked) and spans/s into
  Redis are reported too.

* **durable writes**: the exporter with ``redis_wait_replicas=1`` (a ``WAIT`` per batch) against
  the same exporter without it, on a primary with one replica started by the bench (wall time:
  the replication round trip is waiting, not CPU).

Targets (issue 4): at most 10 µs per span for the exporter, at least 3x cheaper than OTLP/HTTP
(both on CPU per span).

Run alone: ``studyin-analytics bench --only exporter [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.util.types import AttributeValue

from ..exporter import RedisStreamSpanExporter, wire
from ..exporter.bus import stream_keys
from ..exporter.redis_exporter import default_guard
from ..instrumentation import semconv
from ..instrumentation.settings import Settings, require
from .framework import BenchContext, Measurement, at_least, at_most, bench, median

BATCH = 512
TARGET_US_PER_SPAN = 10.0
TARGET_RATIO = 3.0
GATEWAY_COMMAND = (sys.executable, "-m", "studyin_analytics.aggregator.cli", "gateway")


class _Capture(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def rich_spans(n: int) -> list[ReadableSpan]:
    """``n`` spans with 6 attributes and one domain event with 5 attributes each."""
    capture = _Capture()
    provider = TracerProvider()
    provider.add_span_processor(capture)
    tracer = provider.get_tracer(semconv.SCOPE_NAME)
    a = semconv.FIELD_ATTRIBUTES
    for i in range(n):
        user = f"k1:{i % 97:032x}"
        attributes: dict[str, AttributeValue] = {
            semconv.USER_HASH: user,
            a["session_id"]: "0b0e7c1e-8a63-4d0e-9d7e-3f1b2c3d4e5f",
            "http.route": "/api/materials/{material_id}",
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "service.version": "1.4.2",
        }
        with tracer.start_as_current_span("studyin.learning_session", attributes=attributes) as span:
            span.add_event(
                semconv.event_name("material_view"),
                {
                    semconv.USER_HASH: user,
                    a["material_id"]: f"cardio-{i % 50}",
                    a["material_type"]: "video",
                    a["progress"]: 0.5,
                    a["time_spent_s"]: 42.0,
                },
            )
    provider.shutdown()
    return capture.spans


def _per_span(function: Callable[[], object], batches: int) -> tuple[float, float]:
    """(wall µs per span, thread-CPU µs per span) of ``batches`` calls of ``function``."""
    wall = time.perf_counter()
    cpu = time.thread_time()
    for _ in range(batches):
        function()
    cpu = time.thread_time() - cpu
    wall = time.perf_counter() - wall
    spans = batches * BATCH
    return wall / spans * 1e6, cpu / spans * 1e6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"gateway not listening on {port} after {timeout_s}s")


@contextlib.contextmanager
def gateway_process(settings: Settings) -> Iterator[int]:
    """``studyin-analytics gateway`` in a child process; yields its port."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        STUDYIN_ANALYTICS_REDIS_URL=require(settings.redis_url, "redis_url"),
        STUDYIN_ANALYTICS_STREAM_PREFIX=settings.stream_prefix,
        STUDYIN_ANALYTICS_PSEUDONYM_KEYS=",".join(
            f"{k}={v.get_secret_value()}" for k, v in settings.pseudonym_keys.items()
        ),
        STUDYIN_ANALYTICS_GATEWAY_PORT=str(port),
    )
    process = subprocess.Popen(
        [*GATEWAY_COMMAND, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _measure(settings: Settings, quick: bool, repeats: int) -> dict[str, list[float]]:
    """Every sample, by name (runs in a thread: the exporters are synchronous)."""
    # The baseline needs the stock OTLP/HTTP exporter (the dev extra), imported only here.
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    batches = 3 if quick else 40
    spans = rich_spans(BATCH)
    guard = default_guard(settings)
    samples: dict[str, list[float]] = {
        k: [] for k in ("enc_msgpack", "enc_otlp", "redis_wall", "redis_cpu", "otlp_wall", "otlp_cpu")
    }
    client = redis.Redis.from_url(require(settings.redis_url, "redis_url"))
    spool = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    redis_exporter = RedisStreamSpanExporter(settings.with_overrides(spool_dir=spool))
    try:
        with gateway_process(settings) as port:
            otlp: SpanExporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=30)
            for exporter in (redis_exporter, otlp):  # warm up connections and caches
                assert exporter.export(spans) is SpanExportResult.SUCCESS
            for _ in range(repeats):
                samples["enc_msgpack"].append(
                    _per_span(lambda: wire.encode_readable_spans(spans, guard), batches)[1]
                )
                samples["enc_otlp"].append(
                    _per_span(lambda: encode_spans(spans).SerializeToString(), batches)[1]
                )
                wall, cpu = _per_span(lambda: redis_exporter.export(spans), batches)
                samples["redis_wall"].append(wall)
                samples["redis_cpu"].append(cpu)
                wall, cpu = _per_span(lambda: otlp.export(spans), batches)
                samples["otlp_wall"].append(wall)
                samples["otlp_cpu"].append(cpu)
                for key in stream_keys(settings):  # keep Redis memory flat between repeats
                    client.delete(key)
            otlp.shutdown()
        if redis_exporter.stats.spans_spooled or redis_exporter.stats.spans_dropped:
            raise RuntimeError("the exporter spooled or dropped spans during the benchmark")
    finally:
        redis_exporter.shutdown()
        client.close()
        with contextlib.suppress(OSError):
            spool.rmdir()
    return samples


@contextlib.contextmanager
def replicated_redis() -> Iterator[str]:
    """A throw-away primary with one replica in sync (``REPLICAOF``); yields the primary's URL."""
    from ..aggregator.devtools.embedded import EmbeddedRedis

    directory = Path(tempfile.mkdtemp(prefix="bench-replicated-"))
    (directory / "primary").mkdir()
    (directory / "replica").mkdir()
    primary, replica = EmbeddedRedis(directory / "primary"), EmbeddedRedis(directory / "replica")
    try:
        primary.start()
        replica.start()
        client = redis.Redis.from_url(replica.url)
        try:
            client.replicaof("127.0.0.1", primary.port)
            deadline = time.monotonic() + 30
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync with its primary within 30 s")
                time.sleep(0.05)
        finally:
            client.close()
        yield primary.url
    finally:
        for server in (replica, primary):
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _measure_wait(settings: Settings, quick: bool, repeats: int) -> dict[str, list[float]]:
    """The exporter with ``redis_wait_replicas=1`` against the same exporter without, on one
    primary with one replica (both on this machine: the replication round trip is loopback)."""
    batches = 3 if quick else 40
    spans = rich_spans(BATCH)
    samples: dict[str, list[float]] = {k: [] for k in ("plain_wall", "plain_cpu", "wait_wall", "wait_cpu")}
    spool = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    with replicated_redis() as url:
        plain_settings = settings.with_overrides(redis_url=url, spool_dir=spool)
        plain = RedisStreamSpanExporter(plain_settings)
        durable = RedisStreamSpanExporter(
            plain_settings.with_overrides(redis_wait_replicas=1, redis_wait_timeout_ms=1000)
        )
        client = redis.Redis.from_url(url)
        try:
            for exporter in (plain, durable):  # warm up connections and caches
                assert exporter.export(spans) is SpanExportResult.SUCCESS
            for _ in range(repeats):
                for name, exporter in (("plain", plain), ("wait", durable)):
                    wall, cpu = _per_span(functools.partial(exporter.export, spans), batches)
                    samples[f"{name}_wall"].append(wall)
                    samples[f"{name}_cpu"].append(cpu)
                for key in stream_keys(plain_settings):  # keep Redis memory flat between repeats
                    client.delete(key)
            if durable.stats.spans_spooled or plain.stats.spans_spooled:
                raise RuntimeError("a write was not confirmed by the replica during the benchmark")
        finally:
            plain.shutdown()
            durable.shutdown()
            client.close()
            shutil.rmtree(spool, ignore_errors=True)
    return samples


def wait_measurements(samples: dict[str, list[float]]) -> list[Measurement]:
    wall, base = median(samples["wait_wall"]), median(samples["plain_wall"])
    cpu, cpu_base = median(samples["wait_cpu"]), median(samples["plain_cpu"])
    return [
        Measurement(
            "export call per span with WAIT 1 (durable writes), wall time",
            wall,
            "µs",
            baseline=base,
            baseline_name="the same exporter without WAIT, same primary + replica",
            notes=f"redis_wait_replicas=1, replica on this machine; CPU/span {cpu:.2f} vs {cpu_base:.2f} µs",
            samples=samples["wait_wall"],
        )
    ]


def measurements(samples: dict[str, list[float]]) -> list[Measurement]:
    def m(key: str) -> float:
        return median(samples[key])

    rows: list[Measurement] = []
    enc, enc_base = m("enc_msgpack"), m("enc_otlp")
    rows.append(
        Measurement(
            "encode, bus wire format (msgpack + privacy guard)",
            enc,
            "µs",
            baseline=enc_base,
            baseline_name="OTLP protobuf encode_spans().SerializeToString()",
            notes="CPU per attribute-rich span, 512-span batches",
            samples=samples["enc_msgpack"],
        )
    )
    cpu, cpu_base = m("redis_cpu"), m("otlp_cpu")
    target, met = at_most(cpu, TARGET_US_PER_SPAN, "µs")
    rows.append(
        Measurement(
            "exporter cost per span, RedisStreamSpanExporter (CPU of the exporting thread)",
            cpu,
            "µs",
            baseline=cpu_base,
            baseline_name="stock OTLPSpanExporter -> gateway (CPU of the exporting thread)",
            target=target,
            met=met,
            notes="what the app pays: encode + guard + send; waiting on Redis/HTTP is not CPU",
            samples=samples["redis_cpu"],
        )
    )
    ratio = cpu_base / cpu if cpu else 0.0
    target, met = at_least(ratio, TARGET_RATIO, "x")
    rows.append(
        Measurement(
            "OTLP/HTTP exporter cost over Redis exporter cost (CPU per span)",
            ratio,
            "x",
            target=target,
            met=met,
            headline=False,
            notes="same spans, same run",
        )
    )
    wall, base = m("redis_wall"), m("otlp_wall")
    rows.append(
        Measurement(
            "export call per span, wall time (encode + XADD round trip)",
            wall,
            "µs",
            baseline=base,
            baseline_name="stock OTLPSpanExporter -> studyin-analytics gateway -> Redis (wall)",
            notes="how long the batch processor's worker is blocked per span",
            samples=samples["redis_wall"],
        )
    )
    rows.append(
        Measurement(
            "spans/s into Redis, one exporter thread",
            1e6 / wall,
            "spans/s",
            baseline=1e6 / base,
            baseline_name="stock OTLP/HTTP exporter through the gateway",
            samples=[1e6 / s for s in samples["redis_wall"]],
        )
    )
    return rows


@bench("exporter")
async def exporter_cost(ctx: BenchContext) -> list[Measurement]:
    settings = ctx.isolated_settings("exporter")
    async with ctx.task("exporter: Redis stream exporter vs OTLP/HTTP"):
        samples = await asyncio.to_thread(_measure, settings, ctx.quick, ctx.repeat_count)
    async with ctx.task("exporter: WAIT for a replica vs none"):
        waiting = await asyncio.to_thread(_measure_wait, settings, ctx.quick, ctx.repeat_count)
    return measurements(samples) + wait_measurements(waiting)
