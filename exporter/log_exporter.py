"""``RedisStreamLogExporter``: StudyIn events carried as log records, to the same bus (issue 16).

An OpenTelemetry log exporter (``OTEL_LOGS_EXPORTER=studyin_redis``, or
``BatchLogRecordProcessor(RedisStreamLogExporter())``). It keeps only ``studyin.*`` events
(:mod:`.log_records`: application log records never reach the bus) and hands them, as wire records,
to a :class:`~.redis_exporter.RedisStreamSpanExporter` of its own: the same privacy guard, wire
format (version 2 log rows), retries, on-disk spool, erasure tombstone and fork safety as spans.

How long an event waits in the process: the batch processor's schedule delay
(``OTEL_BLRP_SCHEDULE_DELAY``, 1000 ms by default; :func:`batch_log_processor`), so a crash loses at
most the events emitted within that delay plus what its queue (``OTEL_BLRP_MAX_QUEUE_SIZE``) held.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from ..instrumentation.privacy import PrivacyGuard
from .connection import SyncClient
from .log_records import sdk_log_events
from .redis_exporter import RedisStreamSpanExporter
from .settings import ExporterSettings

__all__ = ["LOG_WRITER_ROLE", "RedisStreamLogExporter", "batch_log_processor"]

LOG_WRITER_ROLE = "log-exporter"
"""The role in this writer's counters key (``bus stats`` lists it next to span exporters)."""


class RedisStreamLogExporter(LogRecordExporter):
    """Writes the ``studyin.*`` log records of each batch to the bus; drops every other record.

    Constructible with no arguments (``OTEL_LOGS_EXPORTER=studyin_redis``): settings then come from
    ``STUDYIN_ANALYTICS_*`` variables, as for the span exporter.
    """

    def __init__(
        self,
        settings: ExporterSettings | None = None,
        *,
        guard: PrivacyGuard | None = None,
        client: SyncClient | None = None,
    ) -> None:
        self.bus = RedisStreamSpanExporter(settings, guard=guard, client=client, role=LOG_WRITER_ROLE)
        self.dropped_records = 0
        """Log records that were not StudyIn events (application logs), dropped unread."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        records = sdk_log_events(batch)
        self.dropped_records += len(batch) - len(records)
        if not records:
            return LogRecordExportResult.SUCCESS
        result = self.bus.export(records)  # type: ignore[arg-type]  # wire records, as the span exporter encodes
        return (
            LogRecordExportResult.SUCCESS
            if result is SpanExportResult.SUCCESS
            else LogRecordExportResult.FAILURE
        )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.bus.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.bus.shutdown()


def batch_log_processor(exporter: LogRecordExporter | None = None, **options: Any) -> BatchLogRecordProcessor:
    """The batch log processor for the log carrier; ``schedule_delay_millis`` and the other options of
    :class:`BatchLogRecordProcessor` default to the ``OTEL_BLRP_*`` variables (the SDK reads them)."""
    return BatchLogRecordProcessor(exporter or RedisStreamLogExporter(), **options)
