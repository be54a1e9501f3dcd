"""Which server spans are ``api_request`` events (exporter/event_types.py): every HTTP one, never a raw path.

Stock instrumentations of other apps, arriving through the gateway, leave ``http.route`` out for
unmatched paths (and the bare ASGI/WSGI middlewares always do): those requests count under the
``_OTHER`` placeholder. Server spans that are not HTTP (gRPC) are not API requests.
"""

from __future__ import annotations

from typing import Any

import pytest

from studyin_analytics.exporter.event_types import api_request_fields
from studyin_analytics.exporter.wire import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord

pytestmark = pytest.mark.unit


def span(attributes: dict[str, Any], kind: int = SPAN_KIND_SERVER) -> SpanRecord:
    return SpanRecord(b"t" * 16, b"s" * 8, None, "GET", kind, 1_000_000, 3_500_000, 0, attributes, [], {})


@pytest.mark.parametrize(
    ("attributes", "route", "method", "status"),
    [
        (
            {"http.route": "/items/{id}", "http.request.method": "GET", "http.response.status_code": 200},
            "/items/{id}",
            "GET",
            200,
        ),
        # the stock ASGI middleware (no route) on an unmatched path, stable conventions
        (
            {
                "http.request.method": "GET",
                "url.path": "/users/jane@example.com",
                "http.response.status_code": 404,
            },
            "_OTHER",
            "GET",
            404,
        ),
        # a stock Flask/Django app, older conventions, raw target
        (
            {"http.method": "POST", "http.target": "/login?user=jane", "http.status_code": 401},
            "_OTHER",
            "POST",
            401,
        ),
        ({"http.route": "", "http.method": "GET", "http.status_code": 404}, "_OTHER", "GET", 404),
        ({"http.route": "/legacy"}, "/legacy", "_OTHER", 0),  # route but no method: still HTTP
    ],
)
def test_every_http_server_span_is_one_api_request(
    attributes: dict[str, Any], route: str, method: str, status: int
) -> None:
    fields = api_request_fields(span(attributes))
    assert fields is not None
    assert (fields["route"], fields["method"], fields["status_code"]) == (route, method, status)
    assert fields["duration_ms"] == 2.5
    assert "jane" not in repr(fields)


@pytest.mark.parametrize(
    ("attributes", "kind"),
    [
        ({"rpc.system": "grpc", "rpc.service": "Learning"}, SPAN_KIND_SERVER),  # a server, not HTTP
        ({"http.request.method": "GET", "http.route": "/x"}, SPAN_KIND_CLIENT),  # an HTTP client call
    ],
)
def test_other_spans_are_not_api_requests(attributes: dict[str, Any], kind: int) -> None:
    assert api_request_fields(span(attributes, kind)) is None
