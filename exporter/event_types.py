"""Which spans and span events on the bus are StudyIn events: the one rule, for bus reads and the aggregator.

* every span event named ``studyin.<type>`` is one event of that type (:func:`domain_event_type`);
* every HTTP server span is one ``api_request`` event (:func:`api_request_fields`): a span of kind
  SERVER with an HTTP method attribute (either semantic-convention generation) or ``http.route``.
  Its route is ``http.route``; a span without one (StudyIn's middleware always sets it, but stock
  instrumentations of other apps arriving through the gateway leave it out for unmatched paths,
  and the bare ASGI/WSGI middlewares always do) counts under the placeholder
  :data:`~..instrumentation.semconv.UNMATCHED_ROUTE`, never under its raw path. Server spans
  without an HTTP method (gRPC, messaging) are not API requests.
"""

from __future__ import annotations

from typing import Any

from ..instrumentation import semconv
from .wire import SPAN_KIND_SERVER, STATUS_ERROR, SpanRecord

API_REQUEST = "api_request"

domain_event_type = semconv.event_type_of
"""``studyin.material_view`` -> ``material_view``; ``None`` for span events that are not domain events."""


def _label(value: Any) -> str:
    # Sequence attribute values arrive as tuples (wire.decode_batch); labelled as the lists they were.
    return str(list(value)) if isinstance(value, tuple) else str(value)


def api_request_fields(record: SpanRecord) -> dict[str, Any] | None:
    """The ``api_request`` fields of an HTTP server span (both HTTP semconv generations), else ``None``."""
    if record.kind != SPAN_KIND_SERVER:
        return None
    get = record.attributes.get
    route = get(semconv.HTTP_ROUTE)
    method = get("http.request.method")
    if method is None:
        method = get("http.method")  # the older HTTP semantic conventions
        if method is None and route is None:
            return None  # a server span, but not HTTP
    method = method or "_OTHER"
    if route is None or route == "":
        route = semconv.UNMATCHED_ROUTE
    status = get("http.response.status_code")
    if status is None:
        status = get("http.status_code")
    if type(status) is not int:
        status = int(status) if isinstance(status, int) else 0
    error_type = get("error.type")
    if error_type is None:
        if record.status_code == STATUS_ERROR:
            error_type = "_OTHER"
        elif status >= 500:
            error_type = str(status)
    return {
        "route": route if type(route) is str else _label(route),
        "method": method if type(method) is str else _label(method),
        "status_code": status,
        "duration_ms": max(record.end_unix_nano - record.start_unix_nano, 0) / 1e6,
        "error_type": error_type,
    }
