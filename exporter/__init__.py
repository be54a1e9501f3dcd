"""Redis stream exporter and bus of studyin-analytics.

``RedisStreamSpanExporter`` is registered as the ``studyin_redis`` traces exporter, so
``OTEL_TRACES_EXPORTER=studyin_redis`` selects it.
"""

from .redis_exporter import RedisStreamSpanExporter

__all__ = ["RedisStreamSpanExporter"]
