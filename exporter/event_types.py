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

import functools
import math
from datetime import UTC, datetime
from typing import Any

from ..instrumentation import semconv
from .wire import SPAN_KIND_SERVER, STATUS_ERROR, SpanRecord

API_REQUEST = "api_request"
SERVER_SPAN_INDEX = 0xFFFF
"""Position of a span's own ``api_request`` event, after any event index."""

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


# --- wire record -> events --------------------------------------------------------------------------

SpanEvent = tuple[int, str, int, Any, dict[str, Any]]
"""One StudyIn event of a span: ``(index, event type, time_us, user, attributes)``.

``index`` is the position of the span event (:data:`SERVER_SPAN_INDEX` for the span's own
``api_request``); ``time_us`` the event time in integer microseconds (:func:`micros_of`);
``user`` the raw ``user.hash`` attribute of the event, else of the span (not validated);
``attributes`` the span event's attributes (``studyin.*`` names), or the ``api_request`` fields
by field name. A plain tuple: the aggregator maps every event of the bus through it."""

_cached_event_type = functools.lru_cache(maxsize=1024)(domain_event_type)


def span_events(record: SpanRecord, event_type: str | None = None) -> list[SpanEvent]:
    """The StudyIn events one bus record carries, in span order (only ``event_type``'s if given).

    The one wire record -> events rule: the aggregator's mapping (event rows) and the bus reads
    (:func:`.bus.events_of_entry`) both shape their events from it.
    """
    out: list[SpanEvent] = []
    span_user = record.attributes.get(semconv.USER_HASH)
    user_key = semconv.USER_HASH
    for index, event in enumerate(record.events):
        kind = _cached_event_type(event.name)
        if kind is None or (event_type is not None and kind != event_type):
            continue
        attributes = event.attributes
        out.append(
            (index, kind, micros_of(event.time_unix_nano), attributes.get(user_key, span_user), attributes)
        )
    if event_type is None or event_type == API_REQUEST:
        request = api_request_fields(record)
        if request is not None:
            out.append((SERVER_SPAN_INDEX, API_REQUEST, micros_of(record.end_unix_nano), span_user, request))
    return out


_fromtimestamp = datetime.fromtimestamp  # positional tz: keyword parsing costs ~40 % of the call
_modf = math.modf


def micros_of(unix_nano: int) -> int:
    """Microseconds since the epoch of ``unix_nano``, rounded as ``datetime.fromtimestamp(unix_nano / 1e9)``
    rounds (CPython: fractional part of the float seconds, times 1e6, half to even)."""
    fraction, whole = _modf(unix_nano / 1e9)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    return int(whole) * 1_000_000 + micros


def time_of(time_us: int) -> datetime:
    """The UTC datetime of integer microseconds (exact: the float is within 0.25 µs). Any 64-bit
    nanosecond time (the wire's range) lies between 1677 and 2554, which a datetime holds."""
    return _fromtimestamp(time_us / 1e6, UTC)
