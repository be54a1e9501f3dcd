"""The collector route with real processes: app (stock OTLP/HTTP exporter) -> rotel (a real
OpenTelemetry collector) -> ``studyin-analytics gateway`` -> Redis -> aggregator -> PostgreSQL.

Rotel takes flags, not YAML: its receiver and exporter endpoints, batch timeout and retry
backoff are read from ``otel-collector.yaml`` (ports replaced by free ones, the maximum
backoff shortened so the test stays short). The gateway is stopped while the app is sending
and started again later; every span must still arrive, and every event be counted once.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from tests.support import ROOT
from tests.support.exporter import free_port, start_gateway, stop_process, wait_listening

CONFIG = ROOT / "otel-collector.yaml"
RAW_ID = "canary-route-user-161803"
SESSIONS_PER_PHASE = 15


def rotel_binary() -> Path:
    import rotel

    path = Path(rotel.__file__).parent / "rotel-agent"
    assert path.is_file(), f"rotel-agent not found at {path} (pip install rotel)"
    return path


def rotel_command(config: dict[str, Any], grpc_port: int, http_port: int, gateway_port: int) -> list[str]:
    """Rotel flags from the YAML: endpoints (with ports substituted), batch timeout, retry backoff."""
    protocols = config["receivers"]["otlp"]["protocols"]
    grpc_host = protocols["grpc"]["endpoint"].rsplit(":", 1)[0]
    http_host = protocols["http"]["endpoint"].rsplit(":", 1)[0]
    (exporter_name,) = config["service"]["pipelines"]["traces"]["exporters"]
    exporter = config["exporters"][exporter_name]
    target = urlsplit(exporter["endpoint"])
    retry = exporter["retry_on_failure"]
    return [
        str(rotel_binary()),
        "start",
        "--otlp-grpc-endpoint",
        f"{grpc_host}:{grpc_port}",
        "--otlp-http-endpoint",
        f"{http_host}:{http_port}",
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        f"{target.scheme}://{target.hostname}:{gateway_port}",
        "--otlp-exporter-protocol",
        "http",
        "--otlp-exporter-compression",
        exporter["compression"],
        "--batch-timeout",
        config["processors"]["batch"]["timeout"],
        "--otlp-exporter-retry-initial-backoff",
        retry["initial_interval"],
        "--otlp-exporter-retry-max-backoff",
        "2s",  # the YAML's 30s would make the test wait; the behaviour is the same
        "--otlp-exporter-retry-max-elapsed-time",
        "120s",
    ]


def bus_spans(settings: Settings) -> dict[bytes, int]:
    """Span id -> how many times it is on the bus."""
    client = redis.Redis.from_url(settings.redis_url or "")
    seen: dict[bytes, int] = {}
    try:
        for key in stream_keys(settings):
            for _, fields in client.xrange(key):
                for record in wire.decode_entry(fields):
                    seen[record.span_id] = seen.get(record.span_id, 0) + 1
    finally:
        client.close()
    return seen


def wait_for_spans(settings: Settings, expected: int, timeout_s: float) -> dict[bytes, int]:
    deadline = time.monotonic() + timeout_s
    seen = bus_spans(settings)
    while len(seen) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = bus_spans(settings)
    return seen


def run_sessions(tracker: StudyInTracker, phase: int) -> None:
    for i in range(SESSIONS_PER_PHASE):
        user = f"student-{i % 5}"
        with tracker.session(user) as session:
            tracker.material_view(user, f"mat-{phase}-{i}", "video", session=session)
            tracker.xp_awarded(user, 10, "material_complete", session=session)


def drive_route(settings: Settings, tmp_path: Path) -> None:
    """App -> rotel -> gateway -> Redis, with the gateway stopped for a while; all spans on the bus."""
    config = yaml.safe_load(CONFIG.read_text())
    grpc_port, http_port, gateway_port = free_port(), free_port(), free_port()
    gateway = start_gateway(settings, gateway_port, tmp_path / "gateway.log")
    rotel_log = open(tmp_path / "rotel.log", "ab")  # noqa: SIM115
    rotel = subprocess.Popen(
        rotel_command(config, grpc_port, http_port, gateway_port), stdout=rotel_log, stderr=subprocess.STDOUT
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "studyin-app"}))
    try:
        wait_listening(http_port, 30, rotel)  # its exit code says nothing: wait for the port
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=10)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        tracker = StudyInTracker(
            tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings)
        )

        run_sessions(tracker, 1)
        with provider.get_tracer("app").start_as_current_span("raw", attributes={"user.id": RAW_ID}):
            pass
        assert provider.force_flush(10_000)
        assert len(wait_for_spans(settings, SESSIONS_PER_PHASE + 1, 30)) == SESSIONS_PER_PHASE + 1

        stop_process(gateway)  # the gateway goes away while the app keeps sending
        run_sessions(tracker, 2)
        assert provider.force_flush(10_000)  # the collector took them
        time.sleep(2.0)  # the collector retries against a closed port meanwhile
        assert len(bus_spans(settings)) == SESSIONS_PER_PHASE + 1
        gateway = start_gateway(settings, gateway_port, tmp_path / "gateway.log")
        run_sessions(tracker, 3)
        provider.shutdown()
        expected = 3 * SESSIONS_PER_PHASE + 1
        seen = wait_for_spans(settings, expected, 60)
        assert len(seen) == expected, f"{len(seen)} of {expected} spans reached the bus"
    finally:
        provider.shutdown()
        stop_process(rotel)
        rotel_log.close()
        stop_process(gateway)


async def test_app_to_postgres_through_rotel_with_gateway_outage(migrated: Settings, tmp_path: Path) -> None:
    settings = migrated
    await asyncio.to_thread(drive_route, settings, tmp_path)

    # The raw id was hashed by the gateway's guard (rotel runs no redaction of its own).
    dump = b"".join(
        fields[b"d"]
        for _, fields in redis.Redis.from_url(settings.redis_url or "").xrange(stream_keys(settings)[0])
    )
    assert RAW_ID.encode() not in dump

    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    sessions = 3 * SESSIONS_PER_PHASE
    conn = await asyncpg.connect(settings.postgres_url)
    try:
        schema = settings.postgres_schema
        by_type = dict(
            await conn.fetch(f'SELECT event_type, count(*) FROM "{schema}".analytics_events GROUP BY 1')
        )
        daily = await conn.fetchrow(
            "SELECT sum(sessions), sum(materials_viewed), sum(xp), sum(events) "
            f'FROM "{schema}".daily_activity_summary'
        )
        stored_sessions = await conn.fetchval(f'SELECT count(*) FROM "{schema}".learning_sessions')
    finally:
        await conn.close()
    assert by_type == {
        "session_start": sessions,
        "material_view": sessions,
        "xp_awarded": sessions,
        "session_end": sessions,
    }
    assert tuple(daily) == (sessions, sessions, 10 * sessions, 4 * sessions)
    assert stored_sessions == sessions
