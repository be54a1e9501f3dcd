"""A tracker on the log-record carrier with in-memory span and log exporters (the ``carried`` fixture)."""

from __future__ import annotations

from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from studyin_analytics.instrumentation import LogRecordCarrier, StudyInTracker
from tests.support.pipeline import PSEUDONYMIZER, Pipeline


class Carried:
    def __init__(self) -> None:
        self.pipeline = Pipeline()
        self.logs = InMemoryLogRecordExporter()
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        carrier = LogRecordCarrier.create(self.pipeline.tracer_provider, self.logger_provider)
        self.tracker = StudyInTracker(
            tracer_provider=self.pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, carrier=carrier
        )
        self.tracer = self.pipeline.tracer_provider.get_tracer("test")

    def records(self) -> list[ReadableLogRecord]:
        return list(self.logs.get_finished_logs())

    def names(self) -> list[str]:
        return [r.log_record.event_name or "" for r in self.records()]

    def span_events(self, name: str) -> list[str]:
        return [e.name for s in self.pipeline.spans() if s.name == name for e in s.events]
