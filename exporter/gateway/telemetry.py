"""The gateway's self-telemetry: per-request outcome and size, plus its own counters, observed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Observation

from ..runtime.selftelemetry import (
    GATEWAY_REDIS_FAILURES,
    GATEWAY_REQUESTS,
    GATEWAY_SPANS_ACCEPTED,
    GATEWAY_SPANS_REJECTED,
    SERVICE_GATEWAY,
    SelfTelemetry,
)

if TYPE_CHECKING:
    from .app import Gateway


def gateway_outcome(status: int) -> str:
    if status < 300:
        return "accepted"
    if status == 503:
        return "unavailable"
    return "rejected" if status < 500 else "error"


class GatewayTelemetry:
    """The gateway's metrics: per-request outcome and size, plus its own counters, observed."""

    def __init__(self, gateway: Gateway, *, instance_id: str | None = None) -> None:
        self.telemetry = SelfTelemetry(SERVICE_GATEWAY, instance_id=instance_id)
        self._requests = self.telemetry.counter(GATEWAY_REQUESTS)
        self.telemetry.observe(GATEWAY_SPANS_ACCEPTED, lambda: [Observation(gateway.stats.spans_exported)])
        self.telemetry.observe(GATEWAY_SPANS_REJECTED, lambda: [Observation(gateway.spans_rejected)])
        self.telemetry.observe(GATEWAY_REDIS_FAILURES, lambda: [Observation(gateway.unavailable)])

    def count(self, status: int) -> None:
        attributes: dict[str, str | int] = {
            "studyin.outcome": gateway_outcome(status),
            "http.response.status_code": status,
        }
        self._requests.add(1, attributes)

    def middleware_options(self) -> dict[str, Any]:
        return {"telemetry": self.telemetry, "body_size": True, "on_response": self.count}
