"""The gateway's ``POST /v1/logs``: OTLP logs into the bus as log-record events (issue 16).

The same request handling as ``/v1/traces`` (:class:`Signal` tells the gateway what differs): only
``studyin.*`` events are kept (:mod:`..log_records`, the logs exporter's rule); every other log
record, its body above all, is dropped before anything is encoded, and is not reported as rejected
(the collector routes all logs here, and has nothing to retry). An event's body is never carried.
Rejected, with ``partial_success``: a trace or span id of the wrong length, a time outside the
event window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from .. import wire
from ..admission import EventWindow
from ..log_records import is_event_name, log_event
from .otlp_decode import parse_json, parse_protobuf

__all__ = ["LOGS", "LOGS_PATH", "Signal", "log_records_of"]

LOGS_PATH = "/v1/logs"


class Signal(NamedTuple):
    """What differs between the OTLP signals the gateway accepts."""

    parse: Callable[[bytes, bool], Any]
    """Body (protobuf, or JSON when the flag is set) -> export request."""
    records: Callable[[Any, EventWindow | None], tuple[list[wire.SpanRecord], Counter[str]]]
    response: Callable[[], Any]
    reject: Callable[[Any, int], None]
    """Set the rejected count of a response's ``partial_success``."""
    noun: str


def log_problem(record: LogRecord, window: EventWindow | None) -> str | None:
    """Why the gateway rejects a ``studyin.*`` log record (a fixed text, never a value), or ``None``."""
    if len(record.trace_id) not in (0, 16):
        return "invalid trace_id"
    if len(record.span_id) not in (0, 8):
        return "invalid span_id"
    if window is not None:
        return window.problem(record.time_unix_nano or record.observed_time_unix_nano, "an event's time")
    return None


def log_records_of(
    request: ExportLogsServiceRequest, window: EventWindow | None = None
) -> tuple[list[wire.SpanRecord], Counter[str]]:
    """Bus records of the ``studyin.*`` events of a request, and how many were rejected for which reason."""
    from .app import attributes_of  # the one OTLP attribute conversion (app imports this module)

    records: list[wire.SpanRecord] = []
    rejected: Counter[str] = Counter()
    for resource_logs in request.resource_logs:
        resource: dict[str, Any] | None = None
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                if not is_event_name(record.event_name):
                    continue  # an application log: dropped unread
                problem = log_problem(record, window)
                if problem is not None:
                    rejected[problem] += 1
                    continue
                if resource is None:
                    resource = attributes_of(resource_logs.resource.attributes)
                records.append(
                    log_event(
                        record.event_name,
                        record.time_unix_nano or record.observed_time_unix_nano,
                        bytes(record.trace_id) or None,
                        bytes(record.span_id) or None,
                        attributes_of(record.attributes),
                        resource,
                    )
                )
    return records, rejected


def _reject(response: ExportLogsServiceResponse, count: int) -> None:
    response.partial_success.rejected_log_records = count


LOGS = Signal(
    lambda body, json: (
        parse_json(body, ExportLogsServiceRequest) if json else parse_protobuf(body, ExportLogsServiceRequest)
    ),
    log_records_of,
    ExportLogsServiceResponse,
    _reject,
    "log records",
)
