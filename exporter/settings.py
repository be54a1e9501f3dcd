"""Settings groups of the exporter layer (the bus, the span exporter's spool, the services' logging and
HTTP servers) and :class:`ExporterSettings`, what an application exporting spans to the bus reads.

Each field is defined once, in one group; a service's settings class inherits its groups
(``exporter/gateway/settings.py``, ``aggregator/consumer/settings.py``, ``aggregator/api/settings.py``).
Code shared by several services types its parameter with the group it reads (``BusSettings`` for
``exporter/connection.py``): every class that inherits the group is accepted (docs/architecture.md).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..instrumentation.settings import PseudonymKeySettings
from ..instrumentation.settings_base import StudyInSettings

__all__ = [
    "BusSettings",
    "EventWindowSettings",
    "ExporterSettings",
    "HttpServerSettings",
    "LoggingSettings",
    "SpoolSettings",
    "get_settings",
]


class BusSettings(StudyInSettings):
    """Group: where the Redis stream bus is and how it is laid out, the aggregators' consumer group included
    (every reader and writer)."""

    redis_url: str | None = Field(
        default=None, description="Redis URL of the event bus, e.g. redis://127.0.0.1:6379/0"
    )
    redis_cluster: bool = Field(
        default=False,
        description="redis_url names a node of a Redis Cluster: the bus uses cluster clients and one "
        "hash-tagged stream per shard (set stream_shards to a few per primary)",
    )
    stream_prefix: str = Field(
        default="studyin:analytics", min_length=1, description="Prefix of every Redis key of the bus"
    )
    stream_shards: int = Field(default=1, ge=1, le=1024, description="Number of stream keys (by user hash)")
    retention_days: float = Field(default=7.0, gt=0, description="Bus retention (approximate MINID trim)")
    stream_max_len: int = Field(default=2_000_000, ge=1000, description="Hard cap on entries per stream key")
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Replicas a bus write must reach (Redis WAIT) to count as written: the exporter "
        "spools and the gateway answers 503 otherwise, so a failover loses none (0: no WAIT)",
    )
    redis_wait_timeout_ms: int = Field(
        default=500,
        ge=1,
        le=4000,  # below the writers' 5 s socket timeout
        description="How long a bus write waits for redis_wait_replicas",
    )
    consumer_group: str = Field(
        default="aggregator", min_length=1, description="Consumer group of the aggregators"
    )


class SpoolSettings(StudyInSettings):
    """Group: the span exporter's deadline and its on-disk spool for batches Redis did not take."""

    spool_dir: Path | None = Field(default=None, description="On-disk spool for batches Redis did not take")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0, description="Bound of the spool")
    export_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one export call")
    export_retry_s: float = Field(
        default=2.0,
        ge=0,
        description="Time one export spends retrying Redis before spooling (within export_timeout_s)",
    )


class EventWindowSettings(StudyInSettings):
    """Group: the time window of events a receiver (gateway, aggregator) accepts."""

    max_event_future_s: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="Clock skew allowed: events timed later than this after the receiver's clock are "
        "refused (gateway: partial success) or dead-lettered (aggregator)",
    )
    raw_retention_days: int = Field(default=90, ge=1, description="Days of raw events kept in Postgres")


class LoggingSettings(StudyInSettings):
    """Group: the services' logs."""

    log_format: Literal["text", "json"] = Field(
        default="text", description="Service logs: 'text' for people, 'json' lines for log pipelines"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = Field(
        default=None, description="Log level (default: INFO for services, WARNING for one-shot commands)"
    )


class HttpServerSettings(StudyInSettings):
    """Group: the deadlines of the HTTP services' server (query API and OTLP gateway)."""

    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Query API and OTLP gateway: time a client has to send a request's headers (the "
        "connection is closed beyond)",
    )
    http_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Query API and OTLP gateway: time a client has to send a request's body (408 beyond)",
    )


class ExporterSettings(PseudonymKeySettings, BusSettings, SpoolSettings):
    """What an application that exports its spans to the bus reads (``RedisStreamSpanExporter``).

    Like ``InstrumentationSettings``, no ``.env`` unless asked (``STUDYIN_ANALYTICS_DOTENV``).
    """


@lru_cache(maxsize=1)
def get_settings() -> ExporterSettings:
    """An exporting app's settings from the environment, read once per process."""
    return ExporterSettings()
