"""Redis stream exporters and bus of studyin-analytics.

``RedisStreamSpanExporter`` is registered as the ``studyin_redis`` traces exporter, so
``OTEL_TRACES_EXPORTER=studyin_redis`` selects it; ``RedisStreamLogExporter`` as the
``studyin_redis`` logs exporter (``OTEL_LOGS_EXPORTER=studyin_redis``: ``studyin.*`` events only).
"""

from .log_exporter import RedisStreamLogExporter
from .redis_exporter import RedisStreamSpanExporter

__all__ = ["RedisStreamLogExporter", "RedisStreamSpanExporter"]
