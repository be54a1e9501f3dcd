"""Self-telemetry of the pipeline's services (aggregator, gateway, query API) as OpenTelemetry metrics.

Each service builds one :class:`SelfTelemetry`: an SDK ``MeterProvider`` of its own (resource
``service.name`` = ``studyin-aggregator`` / ``studyin-gateway`` / ``studyin-api``,
``service.instance.id``, ``service.version`` from the package metadata) read by

* a ``PrometheusMetricReader`` (``opentelemetry-exporter-prometheus``) registered in a
  ``CollectorRegistry`` of its own, rendered by ``prometheus_client`` at ``GET /metrics`` on the
  service's existing HTTP listener (aggregator health server, gateway, API): always there;
* the push exporters ``OTEL_METRICS_EXPORTER`` names (``otlp``, ``console``, ...), each behind a
  ``PeriodicExportingMetricReader``, resolved by the SDK's own code and entry points, exactly as
  ``opentelemetry-instrument`` does. Unset or ``none``: no push (the spec's default is ``otlp``;
  here an unset variable must not make every service dial ``localhost:4317``). ``prometheus`` in
  the list adds nothing: scraping is already at ``/metrics``.

No global ``MeterProvider`` is installed: an app's own provider (and the several services that
tests run in one process) never collide with these, and nothing here reaches another registry.

Why this module lives in ``exporter/``: it is the lowest layer that all three services share (the
gateway lives here; the aggregator and the API import ``exporter``), while ``instrumentation/`` is
what StudyIn's apps import and must not carry the pipeline's operational concerns. It knows no
service: each service's own metrics live with it (``exporter/gateway/telemetry.py``,
``aggregator/api/telemetry.py``, ``aggregator/consumer/telemetry.py``), the HTTP server metrics
in :mod:`.http_metrics`, so the layers depend one way. All metrics are declared once, in
:data:`CATALOGUE` (docs/operations-metrics.md is
generated from it and checked by a test). Privacy: attributes hold only route templates,
methods, status codes, outcomes and dependency names, never user values.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
from opentelemetry.sdk.environment_variables import OTEL_METRIC_EXPORT_INTERVAL
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ...instrumentation.settings import ConfigurationError
from ...instrumentation.version import __version__

_log = logging.getLogger(__name__)

SERVICE_AGGREGATOR = "studyin-aggregator"
SERVICE_GATEWAY = "studyin-gateway"
SERVICE_API = "studyin-api"
SERVICES = (SERVICE_AGGREGATOR, SERVICE_GATEWAY, SERVICE_API)
METER_NAME = "studyin_analytics.selftelemetry"
METRICS_PATH = "/metrics"


# --- the catalogue: every metric, once ------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """One metric: OpenTelemetry name, instrument kind, UCUM unit, attribute keys, services, meaning."""

    name: str
    kind: str
    """``counter``, ``histogram`` or ``gauge`` (observable counters are ``counter``)."""
    unit: str
    attributes: tuple[str, ...]
    services: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] | None = None

    @property
    def prometheus_name(self) -> str:
        """The family name ``opentelemetry-exporter-prometheus`` gives it (checked by the tests)."""
        name = self.name.replace(".", "_")
        suffix = {"s": "_seconds", "By": "_bytes"}.get(self.unit, "")
        name += suffix
        return name + "_total" if self.kind == "counter" else name


DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""The semantic conventions' advice for ``http.server.request.duration``."""
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BODY_BUCKETS = (0.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 4_000_000.0, 16_000_000.0)

HTTP_ATTRIBUTES = ("http.request.method", "http.route", "http.response.status_code", "error.type")

HTTP_DURATION = MetricSpec(
    "http.server.request.duration",
    "histogram",
    "s",
    HTTP_ATTRIBUTES,
    (SERVICE_GATEWAY, SERVICE_API),
    "Duration of HTTP server requests (route template, never the raw path)",
    DURATION_BUCKETS,
)
HTTP_BODY_SIZE = MetricSpec(
    "http.server.request.body.size",
    "histogram",
    "By",
    HTTP_ATTRIBUTES,
    (SERVICE_GATEWAY,),
    "Size of OTLP request bodies as sent (Content-Length, else bytes read; before gzip decompression)",
    BODY_BUCKETS,
)
GATEWAY_REQUESTS = MetricSpec(
    "studyin.gateway.requests",
    "counter",
    "{request}",
    ("studyin.outcome", "http.response.status_code"),
    (SERVICE_GATEWAY,),
    "OTLP export requests by outcome: accepted (200, possibly partial), rejected (4xx), "
    "unavailable (503: Redis unreachable), error (other 5xx)",
)
GATEWAY_SPANS_ACCEPTED = MetricSpec(
    "studyin.gateway.spans.accepted",
    "counter",
    "{span}",
    (),
    (SERVICE_GATEWAY,),
    "Spans written to the bus",
)
GATEWAY_SPANS_REJECTED = MetricSpec(
    "studyin.gateway.spans.rejected",
    "counter",
    "{span}",
    (),
    (SERVICE_GATEWAY,),
    "Spans rejected inside accepted requests (invalid ids: OTLP partial success)",
)
GATEWAY_REDIS_FAILURES = MetricSpec(
    "studyin.gateway.redis.failures",
    "counter",
    "{request}",
    (),
    (SERVICE_GATEWAY,),
    "Requests answered 503 because the write to Redis failed",
)
AGG_EVENTS_COMMITTED = MetricSpec(
    "studyin.aggregator.events.committed",
    "counter",
    "{event}",
    (),
    (SERVICE_AGGREGATOR,),
    "Events newly inserted into PostgreSQL and rolled up (each event counts once, ever)",
)
AGG_EVENTS_DUPLICATE = MetricSpec(
    "studyin.aggregator.events.duplicate",
    "counter",
    "{event}",
    (),
    (SERVICE_AGGREGATOR,),
    "Events in committed transactions that were already in the table (redelivery, duplicate entry): skipped",
)
AGG_EVENTS_EXPIRED = MetricSpec(
    "studyin.aggregator.events.expired",
    "counter",
    "{event}",
    (),
    (SERVICE_AGGREGATOR,),
    "Events older than raw retention when read: not counted",
)
AGG_ENTRIES_READ = MetricSpec(
    "studyin.aggregator.entries.read",
    "counter",
    "{entry}",
    (),
    (SERVICE_AGGREGATOR,),
    "Bus entries read (one read again after a failed batch counts again; a rolled-back round's "
    "entries count once, when re-read)",
)
AGG_ENTRIES_DEAD_LETTERED = MetricSpec(
    "studyin.aggregator.entries.dead_lettered",
    "counter",
    "{entry}",
    (),
    (SERVICE_AGGREGATOR,),
    "Entries moved to the dead-letter stream (undecodable, or failed too often)",
)
AGG_ENTRIES_CLAIMED = MetricSpec(
    "studyin.aggregator.entries.claimed",
    "counter",
    "{entry}",
    (),
    (SERVICE_AGGREGATOR,),
    "Entries claimed from consumers idle past the claim timeout (dead members)",
)
AGG_BATCHES_COMMITTED = MetricSpec(
    "studyin.aggregator.batches.committed",
    "counter",
    "{batch}",
    (),
    (SERVICE_AGGREGATOR,),
    "PostgreSQL transactions committed (one per round of new entries; one per stream and batch of "
    "redelivered ones; one per entry while isolating a bad one)",
)
AGG_COMMIT_DURATION = MetricSpec(
    "studyin.aggregator.batch.commit.duration",
    "histogram",
    "s",
    (),
    (SERVICE_AGGREGATOR,),
    "Duration of one committed transaction, from its first COPY to its commit (a round spans the "
    "reads of its batches)",
    COMMIT_BUCKETS,
)
AGG_LAG = MetricSpec(
    "studyin.aggregator.lag",
    "gauge",
    "{entry}",
    (),
    (SERVICE_AGGREGATOR,),
    "Entries the consumer group has not acknowledged yet (unread plus pending), all streams; "
    "refreshed at each scrape",
)
AGG_PENDING = MetricSpec(
    "studyin.aggregator.pending",
    "gauge",
    "{entry}",
    (),
    (SERVICE_AGGREGATOR,),
    "Entries delivered to the group but not acknowledged yet",
)
AGG_DEAD_LETTER_LENGTH = MetricSpec(
    "studyin.aggregator.dead_letter.length",
    "gauge",
    "{entry}",
    (),
    (SERVICE_AGGREGATOR,),
    "Entries in the dead-letter stream (all members)",
)
AGG_UP = MetricSpec(
    "studyin.aggregator.dependency.up",
    "gauge",
    "{up}",
    ("db.system.name",),
    (SERVICE_AGGREGATOR,),
    "1 when the dependency (redis, postgresql) answered the last health check, else 0",
)
API_AUDIT_WRITES = MetricSpec(
    "studyin.api.audit.writes",
    "counter",
    "{record}",
    ("http.route", "studyin.audit.scope", "studyin.outcome"),
    (SERVICE_API,),
    "Rows written to the access audit log, by endpoint template, scope (user, cohort, system) "
    "and outcome (allowed, denied)",
)

CATALOGUE: tuple[MetricSpec, ...] = (
    HTTP_DURATION,
    HTTP_BODY_SIZE,
    GATEWAY_REQUESTS,
    GATEWAY_SPANS_ACCEPTED,
    GATEWAY_SPANS_REJECTED,
    GATEWAY_REDIS_FAILURES,
    AGG_EVENTS_COMMITTED,
    AGG_EVENTS_DUPLICATE,
    AGG_EVENTS_EXPIRED,
    AGG_ENTRIES_READ,
    AGG_ENTRIES_DEAD_LETTERED,
    AGG_ENTRIES_CLAIMED,
    AGG_BATCHES_COMMITTED,
    AGG_COMMIT_DURATION,
    AGG_LAG,
    AGG_PENDING,
    AGG_DEAD_LETTER_LENGTH,
    AGG_UP,
    API_AUDIT_WRITES,
)

_SERVICE_LABEL = {SERVICE_AGGREGATOR: "aggregator", SERVICE_GATEWAY: "gateway", SERVICE_API: "API"}


def markdown_table() -> str:
    """The metric table of docs/operations-metrics.md (a test keeps the two equal)."""
    lines = [
        "| metric | Prometheus name | type | unit | attributes | service | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in CATALOGUE:
        attributes = ", ".join(f"`{a}`" for a in spec.attributes) or "–"
        services = ", ".join(_SERVICE_LABEL[s] for s in spec.services)
        lines.append(
            f"| `{spec.name}` | `{spec.prometheus_name}` | {spec.kind} | `{spec.unit}` | {attributes} "
            f"| {services} | {spec.description} |"
        )
    return "\n".join(lines) + "\n"


# --- the provider ----------------------------------------------------------------------------------


def service_version() -> str:
    try:
        return str(metadata.version("studyin-analytics"))
    except metadata.PackageNotFoundError:  # running from a source tree
        return __version__


def push_readers() -> list[MetricReader]:
    """Readers for the push exporters ``OTEL_METRICS_EXPORTER`` names (none when unset or ``none``)."""
    # The SDK's own resolution (entry points, ``otlp`` -> grpc/http by OTEL_EXPORTER_OTLP_PROTOCOL),
    # so the variable means here what it means under opentelemetry-instrument.
    from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters

    names = [name for name in _get_exporter_names("metrics") if name != "prometheus"]
    if not names:
        return []
    try:
        _, exporters, _ = _import_exporters([], names, [])
    except RuntimeError as exc:
        raise ConfigurationError(
            f"OTEL_METRICS_EXPORTER: {exc} (install the exporter package, e.g. "
            "opentelemetry-exporter-otlp-proto-http with OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=http/protobuf)"
        ) from None
    readers: list[MetricReader] = []
    for name, exporter_class in exporters.items():
        if issubclass(exporter_class, MetricExporter):
            # The reader reads OTEL_METRIC_EXPORT_INTERVAL / _TIMEOUT itself.
            readers.append(PeriodicExportingMetricReader(exporter_class()))
        else:
            _log.warning("OTEL_METRICS_EXPORTER %s is a pull reader: ignored (scrape /metrics)", name)
    return readers


def export_interval_s() -> float:
    """``OTEL_METRIC_EXPORT_INTERVAL`` in seconds (60 when unset or invalid, as the SDK)."""
    try:
        return max(float(os.environ.get(OTEL_METRIC_EXPORT_INTERVAL, "60000")) / 1000.0, 0.1)
    except ValueError:
        return 60.0


class SelfTelemetry:
    """The meter provider of one service, with its Prometheus registry and push readers."""

    def __init__(self, service: str, *, instance_id: str | None = None) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        self.service = service
        self.registry = CollectorRegistry()
        self.pushing = push_readers()
        resource = Resource.create(
            {
                "service.name": service,
                "service.namespace": "studyin-analytics",
                "service.instance.id": instance_id or str(uuid.uuid4()),
                "service.version": service_version(),
            }
        )
        self.provider = MeterProvider(
            metric_readers=[PrometheusMetricReader(registry=self.registry), *self.pushing],
            resource=resource,
            shutdown_on_exit=False,  # the services shut it down (flushing the push readers) themselves
        )
        self.meter: Meter = self.provider.get_meter(METER_NAME, service_version())
        self._closed = False

    def _check(self, spec: MetricSpec) -> None:
        if self.service not in spec.services:
            raise ValueError(f"{spec.name} is not a metric of {self.service}")

    def counter(self, spec: MetricSpec) -> Counter:
        self._check(spec)
        return self.meter.create_counter(spec.name, unit=spec.unit, description=spec.description)

    def histogram(self, spec: MetricSpec) -> Histogram:
        self._check(spec)
        return self.meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=list(spec.buckets) if spec.buckets else None,
        )

    def observe(self, spec: MetricSpec, read: Callable[[], Iterable[Observation]]) -> None:
        """An observable counter or gauge whose callback reports ``read()``."""
        self._check(spec)

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return list(read())

        if spec.kind == "counter":
            self.meter.create_observable_counter(
                spec.name, callbacks=[callback], unit=spec.unit, description=spec.description
            )
        else:
            self.meter.create_observable_gauge(
                spec.name, callbacks=[callback], unit=spec.unit, description=spec.description
            )

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics if ``accept`` asks) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def metrics_endpoint(self, request: Any) -> Any:
        """Starlette endpoint for ``GET /metrics``."""
        from starlette.responses import Response

        body, content_type = self.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    def shutdown(self) -> None:
        """Flush the push readers (last export) and stop them; safe twice."""
        if not self._closed:
            self._closed = True
            self.provider.shutdown(timeout_millis=5_000)
