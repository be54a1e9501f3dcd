"""Shared bits of the instrumentation tests: in-memory SDK pipelines (the carrier under test,
not a stand-in for Redis/PostgreSQL)."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.instrumentation import Pseudonymizer

KEY = b"unit-test-key-0123456789"
STATIC_FILE = "probe.txt"
"""The one file of the ``static_dir`` fixture (tests/instrumentation/conftest.py)."""
PSEUDONYMIZER = Pseudonymizer({"k1": KEY}, "k1")


class Pipeline:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def histogram_points(self, name: str) -> list[tuple[dict[str, object], int]]:
        data = self.reader.get_metrics_data()
        out: list[tuple[dict[str, object], int]] = []
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            out.append((dict(point.attributes or {}), int(point.count)))  # type: ignore[union-attr]
        return out
