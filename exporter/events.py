"""Which spans and span events on the bus are StudyIn events: the one rule, for bus reads and the aggregator.

* every span event named ``studyin.<type>`` is one event of that type (:func:`domain_event_type`);
* every HTTP server span with a templated route is one ``api_request`` event (:func:`api_request_fields`).
"""

from __future__ import annotations

from typing import Any

from ..instrumentation import semconv
from .wire import SPAN_KIND_SERVER, STATUS_ERROR, SpanRecord

API_REQUEST = "api_request"

domain_event_type = semconv.event_type_of
"""``studyin.material_view`` -> ``material_view``; ``None`` for span events that are not domain events."""


def _first(attributes: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = attributes.get(name)
        if value is not None:
            return value
    return None


def api_request_fields(record: SpanRecord) -> dict[str, Any] | None:
    """The ``api_request`` fields of an HTTP server span (both HTTP semconv generations), else ``None``."""
    if record.kind != SPAN_KIND_SERVER:
        return None
    attributes = record.attributes
    route = attributes.get("http.route")
    if route is None:
        return None
    status = _first(attributes, "http.response.status_code", "http.status_code")
    error_type = attributes.get("error.type")
    if error_type is None and record.status_code == STATUS_ERROR:
        error_type = "_OTHER"
    if error_type is None and isinstance(status, int) and status >= 500:
        error_type = str(status)
    return {
        "route": str(route),
        "method": str(_first(attributes, "http.request.method", "http.method") or "_OTHER"),
        "status_code": int(status) if isinstance(status, int) else 0,
        "duration_ms": max(record.end_unix_nano - record.start_unix_nano, 0) / 1e6,
        "error_type": error_type,
    }
