"""RedisStreamLogExporter against real Redis: only ``studyin.*`` events reach the bus (application logs
never do), through the one privacy guard, with their uid as the row's identity; the entry point."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import RedisStreamLogExporter, wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.log_exporter import LOG_WRITER_ROLE
from studyin_analytics.exporter.writer_stats import stats_key
from studyin_analytics.instrumentation import LogRecordCarrier, Pseudonymizer, StudyInTracker, semconv
from tests.support import redis_dump

RAW_ID = "canary-raw-log-user-161803"
BODY_CANARY = "canary-log-body-141421"


def _bus_records(settings: Settings) -> list[wire.SpanRecord]:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return [r for _, fields in client.xrange(stream_keys(settings)[0]) for r in wire.decode_entry(fields)]
    finally:
        client.close()


def test_only_studyin_events_leave_and_through_the_guard(settings: Settings, tmp_path: Path) -> None:
    exporter = RedisStreamLogExporter(settings.with_overrides(spool_dir=tmp_path))
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    app_log = logging.getLogger("tests.app")
    app_log.addHandler(LoggingHandler(logger_provider=provider))
    app_log.setLevel(logging.INFO)
    app_log.propagate = False
    logger = provider.get_logger("tests")

    app_log.warning("login failed for %s: %s", RAW_ID, BODY_CANARY)  # an application log
    logger.emit(event_name="app.checkout", body=BODY_CANARY, attributes={"user.id": RAW_ID})  # not ours
    logger.emit(  # ours, with a body (never carried) and a raw id, nested too (pseudonymized)
        event_name="studyin.xp_awarded",
        body={"note": BODY_CANARY},
        attributes={
            "user.id": RAW_ID,
            "studyin.xp.amount": 5,
            "studyin.xp.reason": "bonus",
            semconv.EVENT_UID: "ab" * 16,
            "extra": {"user.id": RAW_ID, "user.email": f"{RAW_ID}@example.org"},
        },
    )
    carrier = LogRecordCarrier.create(logger_provider=provider)
    tracker = StudyInTracker(pseudonymizer=Pseudonymizer.from_settings(settings), carrier=carrier)
    tracker.material_view(RAW_ID, "cardio-101", "video")
    provider.shutdown()

    assert exporter.dropped_records == 2
    records = _bus_records(settings)
    assert [r.events[0].name for r in records] == ["studyin.xp_awarded", "studyin.material_view"]
    assert all(r.log is not None and r.span_id == wire.LOG_SPAN_ID for r in records)
    assert records[0].trace_id == bytes.fromhex("ab" * 16)  # the uid is the row's identity
    for record in records:
        assert semconv.EVENT_UID not in record.events[0].attributes
        assert record.events[0].attributes[semconv.USER_HASH].startswith("t1:")
    dump = redis_dump(settings.redis_url or "", settings.stream_prefix)
    assert RAW_ID.encode() not in dump and BODY_CANARY.encode() not in dump
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        assert client.exists(stats_key(settings, LOG_WRITER_ROLE))  # its own counters
    finally:
        client.close()


async def test_a_re_exported_event_is_stored_once(migrated: Settings, tmp_path: Path) -> None:
    settings = migrated
    exporter = RedisStreamLogExporter(settings.with_overrides(spool_dir=tmp_path))
    provider = LoggerProvider()

    class Twice(SimpleLogRecordProcessor):
        def on_emit(self, log_record: object) -> None:
            super().on_emit(log_record)  # type: ignore[arg-type]
            super().on_emit(log_record)  # type: ignore[arg-type]  # a retried export

    provider.add_log_record_processor(Twice(exporter))
    carrier = LogRecordCarrier.create(logger_provider=provider)
    tracker = StudyInTracker(pseudonymizer=Pseudonymizer.from_settings(settings), carrier=carrier)
    with tracker.session(RAW_ID) as session:
        for n in range(3):
            tracker.xp_awarded(RAW_ID, 10 + n, "material_complete", session=session)
    provider.shutdown()
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=30)
    # No tracer provider: the session span does not record, so session_end is a log record too:
    # 5 events, each exported twice.
    assert totals.events_inserted == 5
    assert totals.events_seen == 10


@pytest.mark.usefixtures("exporter_environment")
def test_entry_point_builds_the_exporter_from_the_environment() -> None:
    (entry,) = entry_points(group="opentelemetry_logs_exporter", name="studyin_redis")
    exporter = entry.load()()
    assert isinstance(exporter, RedisStreamLogExporter)
    assert exporter.export([]) is LogRecordExportResult.SUCCESS
    exporter.shutdown()
