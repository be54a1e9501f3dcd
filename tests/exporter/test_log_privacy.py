"""The privacy guard on log records (issue 16), property-based, without servers: arbitrary attribute
trees with planted identities and addresses (:mod:`tests.support.planted`) in a ``studyin.*`` log record's
attributes, nested values and body never reach the wire; a non-``studyin`` record reaches nothing at all."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from studyin_analytics.exporter import wire
from studyin_analytics.exporter.log_records import sdk_log_events
from studyin_analytics.instrumentation import PrivacyGuard, Pseudonymizer
from tests.support.planted import Case, cases, survivors, texts

pytestmark = pytest.mark.unit

GUARD = PrivacyGuard(Pseudonymizer({"k1": b"a" * 20}, "k1"))


def _emitted(case: Case) -> list[ReadableLogRecord]:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource(case.resource))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("t")
    logger.emit(event_name="studyin.material_view", attributes=case.attributes, body=case.event_attributes)
    logger.emit(event_name="app.event", attributes=case.attributes, body=case.event_attributes)
    logger.emit(attributes=case.event_attributes, body=case.name)  # an application log
    provider.shutdown()
    return list(memory.get_finished_logs())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_nothing_planted_in_a_log_record_reaches_the_wire(case: Case) -> None:
    records = sdk_log_events(_emitted(case))
    assert len(records) == 1  # only the studyin.* event
    blob = wire.encode_records(records, GUARD)
    (back,) = wire.decode_batch(blob)
    assert back.log is not None and back.events[0].name == "studyin.material_view"
    assert survivors(texts([back.events[0].attributes, back.resource]), case.planted) == []
    assert survivors([blob], case.planted) == []  # the body is not on the wire at all
