"""The Redis stream bus: key layout and reads (recent, range, live tail, stats).

Writers are :class:`~.redis_exporter.RedisStreamSpanExporter` and the OTLP gateway; the
aggregator reads through a consumer group. Stream ids are the timeline: an id's first part
is the Redis server time in milliseconds when the batch was added.
"""

from __future__ import annotations

from ..instrumentation.settings import Settings


def stream_keys(settings: Settings) -> list[str]:
    """Every stream key of the bus, one per shard."""
    if settings.stream_shards == 1:
        return [f"{settings.stream_prefix}:events"]
    return [f"{settings.stream_prefix}:events:{shard}" for shard in range(settings.stream_shards)]


def dead_letter_key(settings: Settings) -> str:
    """Stream of entries the aggregator gave up on, each with its error."""
    return f"{settings.stream_prefix}:dead-letter"
