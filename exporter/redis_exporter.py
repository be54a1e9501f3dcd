"""``RedisStreamSpanExporter``: a SpanExporter that appends each batch to the Redis stream bus."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..instrumentation.privacy import PrivacyGuard
from ..instrumentation.settings import Settings, get_settings, redact_url, require
from . import wire
from .bus import stream_keys

_log = logging.getLogger(__name__)


class RedisStreamSpanExporter(SpanExporter):
    """Writes one stream entry per export batch (one round trip), trimmed to the retention.

    Constructible with no arguments (``OTEL_TRACES_EXPORTER=studyin_redis``): settings then
    come from ``STUDYIN_ANALYTICS_*`` variables.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        guard: PrivacyGuard | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self._settings = settings or get_settings()
        url = require(self._settings.redis_url, "redis_url")
        self._url_for_logs = redact_url(url)
        self._client = client or redis.Redis.from_url(url, socket_timeout=self._settings.export_timeout_s)
        self._stream = stream_keys(self._settings)[0]
        self._guard = guard or PrivacyGuard()
        self._retention_ms = int(self._settings.retention_days * 86_400_000)
        self._lock = threading.Lock()
        self._shutdown = False
        self.spans_exported = 0
        self.batches_exported = 0
        self.spans_dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        blob = wire.encode_readable_spans(spans, self._guard)
        min_id = f"{int(time.time() * 1000) - self._retention_ms}-0"
        try:
            with self._lock:
                self._client.xadd(
                    self._stream, wire.entry_fields(blob, len(spans)), minid=min_id, approximate=True
                )
        except redis.RedisError as exc:
            self.spans_dropped += len(spans)
            _log.warning(
                "could not export %d spans to %s: %s", len(spans), self._url_for_logs, type(exc).__name__
            )
            return SpanExportResult.FAILURE
        self.spans_exported += len(spans)
        self.batches_exported += 1
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self._shutdown = True
        self._client.close()
