"""``POST /v1/logs``: OTLP logs (as the stock SDK encodes them) into the bus, protobuf and JSON; only
``studyin.*`` events, through the privacy guard, bodies never; bad ids rejected with partial success."""

from __future__ import annotations

import logging

import httpx
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import wire
from studyin_analytics.instrumentation import semconv
from tests.support import redis_dump
from tests.support.gateway import PB, bus_records

RAW_ID = "canary-gateway-log-user-57721"
BODY_CANARY = "canary-gateway-log-body-66743"


def _sdk_logs() -> list[ReadableLogRecord]:
    """Log records as an app's SDK hands them to its OTLP exporter: two events, two application logs."""
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("app")
    logger.emit(
        event_name="studyin.xp_awarded",
        body=BODY_CANARY,
        attributes={"user.id": RAW_ID, "studyin.xp.amount": 5, semconv.EVENT_UID: "cd" * 16},
    )
    logger.emit(
        event_name="studyin.material_view", attributes={"user.id": RAW_ID, "nested": {"user.id": RAW_ID}}
    )
    logger.emit(event_name="app.login", body=BODY_CANARY, attributes={"user.id": RAW_ID})
    app_log = logging.getLogger("tests.gateway.app")
    app_log.addHandler(LoggingHandler(logger_provider=provider))
    app_log.propagate = False
    app_log.warning("failed login %s %s", RAW_ID, BODY_CANARY)
    provider.shutdown()
    return list(memory.get_finished_logs())


def _json(request: ExportLogsServiceRequest) -> dict[str, object]:
    import base64

    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_logs in document.get("resourceLogs", []):
        for scope_logs in resource_logs.get("scopeLogs", []):
            for record in scope_logs.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex()
    return document


async def test_protobuf_and_json_logs_reach_the_bus_as_events_only(
    gateway: httpx.AsyncClient, settings: Settings
) -> None:
    request = encode_logs(_sdk_logs())
    response = await gateway.post("/v1/logs", content=request.SerializeToString(), headers=PB)
    assert response.status_code == 200, response.text
    assert not ExportLogsServiceResponse.FromString(response.content).partial_success.rejected_log_records
    response = await gateway.post("/v1/logs", json=_json(request))
    assert response.status_code == 200, response.text
    records = bus_records(settings)
    assert [r.events[0].name for r in records] == ["studyin.xp_awarded", "studyin.material_view"] * 2
    assert all(r.log is not None for r in records)
    xp = [r for r in records if r.events[0].name == "studyin.xp_awarded"]
    assert {r.trace_id for r in xp} == {bytes.fromhex("cd" * 16)}  # the uid: stored once
    views = [r for r in records if r.events[0].name == "studyin.material_view"]
    assert len({r.trace_id for r in views}) == 1  # no uid: the digest, same for both bodies
    for record in records:
        assert record.events[0].attributes[semconv.USER_HASH].startswith("t1:")
        assert semconv.EVENT_UID not in record.events[0].attributes
    dump = redis_dump(settings.redis_url or "", settings.stream_prefix)
    assert RAW_ID.encode() not in dump and BODY_CANARY.encode() not in dump


async def test_bad_ids_are_rejected_with_partial_success(
    gateway: httpx.AsyncClient, settings: Settings
) -> None:
    request = encode_logs(_sdk_logs())
    records = request.resource_logs[0].scope_logs[0].log_records
    records[0].trace_id = b"\x01" * 5
    response = await gateway.post("/v1/logs", content=request.SerializeToString(), headers=PB)
    assert response.status_code == 200
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 1 and "invalid trace_id" in partial.error_message
    assert [r.events[0].name for r in bus_records(settings)] == ["studyin.material_view"]
    bad = await gateway.post("/v1/logs", content=b"\xff\xff not protobuf", headers=PB)
    assert bad.status_code == 400 and b"ExportLogsServiceRequest" in bad.content
    assert wire.WIRE_VERSION == b"2"
