"""Log-record events through the collector route with real processes: app (the stock SDK's OTLP/HTTP
log and span exporters) -> rotel -> ``studyin-analytics gateway`` (``/v1/logs`` and ``/v1/traces``)
-> Redis -> aggregator -> PostgreSQL; exact counts, application logs never on the bus."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import asyncpg
import redis
import yaml
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation import LogRecordCarrier, Pseudonymizer, StudyInTracker
from tests.support import redis_dump
from tests.support.exporter import free_port, start_gateway, stop_process, wait_listening
from tests.system.test_collector_route import CONFIG, rotel_command

RAW_ID = "canary-route-log-user-299792"
APP_LOG_CANARY = "canary-route-app-log-602214"
SESSIONS = 12


def _bus_events(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return sum(
            len(record.events)
            for key in stream_keys(settings)
            for _, fields in client.xrange(key)
            for record in wire.decode_entry(fields)
        )
    finally:
        client.close()


def drive(settings: Settings, tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    grpc_port, http_port, gateway_port = free_port(), free_port(), free_port()
    gateway = start_gateway(settings, gateway_port, tmp_path / "gateway.log")
    rotel_log = open(tmp_path / "rotel.log", "ab")  # noqa: SIM115
    rotel = subprocess.Popen(
        rotel_command(config, grpc_port, http_port, gateway_port), stdout=rotel_log, stderr=subprocess.STDOUT
    )
    resource = Resource.create({"service.name": "studyin-app"})
    tracer_provider = TracerProvider(resource=resource)
    logger_provider = LoggerProvider(resource=resource)
    try:
        wait_listening(http_port, 30, rotel)
        wait_listening(gateway_port, 30, gateway)
        base = f"http://127.0.0.1:{http_port}"
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=10), schedule_delay_millis=50
            )
        )
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(
                OTLPLogExporter(endpoint=f"{base}/v1/logs", timeout=10), schedule_delay_millis=50
            )
        )
        app_log = logging.getLogger("tests.route.app")
        app_log.addHandler(LoggingHandler(logger_provider=logger_provider))
        app_log.propagate = False
        carrier = LogRecordCarrier.create(tracer_provider, logger_provider)
        tracker = StudyInTracker(
            tracer_provider=tracer_provider,
            pseudonymizer=Pseudonymizer.from_settings(settings),
            carrier=carrier,
        )
        for i in range(SESSIONS):
            user = f"student-{i % 4}"
            with tracker.session(user) as session:
                tracker.material_view(user, f"mat-{i}", "video", session=session)
                tracker.xp_awarded(user, 10, "material_complete", session=session)
                app_log.warning("user %s said %s", RAW_ID, APP_LOG_CANARY)
        assert logger_provider.force_flush(10_000) and tracer_provider.force_flush(10_000)
        deadline = time.monotonic() + 60
        while _bus_events(settings) < 4 * SESSIONS and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        logger_provider.shutdown()
        tracer_provider.shutdown()
        stop_process(rotel)
        rotel_log.close()
        stop_process(gateway)


async def test_log_events_through_rotel_are_exact(migrated: Settings, tmp_path: Path) -> None:
    settings = migrated
    await asyncio.to_thread(drive, settings, tmp_path)
    dump = redis_dump(settings.redis_url or "", settings.stream_prefix)
    assert APP_LOG_CANARY.encode() not in dump and RAW_ID.encode() not in dump
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    conn = await asyncpg.connect(settings.postgres_url)
    try:
        schema = settings.postgres_schema
        by_type = dict(
            await conn.fetch(f'SELECT event_type, count(*) FROM "{schema}".analytics_events GROUP BY 1')
        )
        stored_sessions = await conn.fetchval(f'SELECT count(*) FROM "{schema}".learning_sessions')
    finally:
        await conn.close()
    assert by_type == {
        "session_start": SESSIONS,
        "material_view": SESSIONS,
        "xp_awarded": SESSIONS,
        "session_end": SESSIONS,
    }
    assert stored_sessions == SESSIONS
