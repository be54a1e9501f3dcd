"""The query API's self-telemetry: request durations (via the HTTP server metrics) and audit-log writes."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...exporter.runtime.selftelemetry import API_AUDIT_WRITES, SERVICE_API, SelfTelemetry

_API_TELEMETRY: contextvars.ContextVar[ApiTelemetry | None] = contextvars.ContextVar(
    "studyin_api_telemetry", default=None
)


class ApiTelemetry:
    """The query API's metrics: request durations and audit-log writes."""

    def __init__(self, *, instance_id: str | None = None) -> None:
        self.telemetry = SelfTelemetry(SERVICE_API, instance_id=instance_id)
        self._audit = self.telemetry.counter(API_AUDIT_WRITES)

    def audit_written(self, endpoint: str, scope: str, outcome: str) -> None:
        self._audit.add(1, {"http.route": endpoint, "studyin.audit.scope": scope, "studyin.outcome": outcome})

    @contextmanager
    def current(self) -> Iterator[None]:
        """This API's telemetry is the one :func:`count_audit_write` finds while the block runs."""
        token = _API_TELEMETRY.set(self)
        try:
            yield
        finally:
            _API_TELEMETRY.reset(token)

    def middleware_options(self) -> dict[str, Any]:
        return {"telemetry": self.telemetry, "during_request": self.current}


def count_audit_write(endpoint: str, scope: str, outcome: str) -> None:
    """Count one audit row for the API serving the current request (a no-op outside one)."""
    current = _API_TELEMETRY.get()
    if current is not None:
        current.audit_written(endpoint, scope, outcome)
