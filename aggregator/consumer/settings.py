"""The aggregator's settings: the bus it reads, the database it writes, its consumer group membership
and health endpoint. Read from ``STUDYIN_ANALYTICS_*`` variables, their ``*_FILE`` twins and ``.env``."""

from __future__ import annotations

import socket
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ...exporter.settings import BusSettings, EventWindowSettings, LoggingSettings
from ..storage.settings import PostgresSettings


class AggregatorSettings(BusSettings, PostgresSettings, EventWindowSettings, LoggingSettings):
    """Everything ``studyin-analytics aggregate`` reads (a service: ``.env`` of the working directory too)."""

    model_config = SettingsConfigDict(env_file=".env")

    consumer_name: str = Field(
        default_factory=socket.gethostname, min_length=1, description="Stable name of this consumer"
    )
    consumer_shards: str | None = Field(
        default=None,
        pattern=r"^\s*(\d+\s*/\s*\d+|\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*)\s*$",
        description="Shards this aggregator reads first, as 'i/n' (every shard s with s % n == i) or "
        "'0,2-3'; other shards only while no member that owns them is alive (default: all)",
    )
    batch_size: int = Field(default=2000, ge=1, le=100_000, description="Stream entries per read")
    max_delivery_attempts: int = Field(default=5, ge=1, description="Attempts before dead-lettering")
    claim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        description="A member silent this long (no heartbeat) is gone: others claim its pending "
        "entries and adopt its shards",
    )
    aggregator_health_host: str = Field(default="127.0.0.1", description="Aggregator health endpoint address")
    aggregator_health_port: int = Field(
        default=8002, ge=0, le=65535, description="Aggregator health endpoint port (0: disabled)"
    )

    @model_validator(mode="after")
    def _check_consumer_shards(self) -> Self:
        if self.consumer_shards is not None:
            self.preferred_shards  # noqa: B018  (raises ValueError naming the problem)
        return self

    @property
    def preferred_shards(self) -> tuple[int, ...]:
        """Indexes of the shards this aggregator reads first (``consumer_shards``; all by default).

        Members with disjoint preferred shards aggregate disjoint learners, so their
        transactions never wait on each other's rollup rows (see docs/aggregator.md).
        """
        everything = tuple(range(self.stream_shards))
        text = (self.consumer_shards or "").replace(" ", "")
        if not text:
            return everything
        if "/" in text:
            index, count = (int(part) for part in text.split("/"))
            if count < 1 or index >= count:
                raise ValueError(f"consumer_shards '{text}': expected i/n with 0 <= i < n")
            chosen = tuple(shard for shard in everything if shard % count == index)
        else:
            picked: set[int] = set()
            for item in text.split(","):
                low, _, high = item.partition("-")
                picked.update(range(int(low), int(high or low) + 1))
            chosen = tuple(sorted(picked))
            if chosen and chosen[-1] >= self.stream_shards:
                raise ValueError(
                    f"consumer_shards '{text}' names shard {chosen[-1]}, "
                    f"but stream_shards is {self.stream_shards}"
                )
        if not chosen:
            raise ValueError(f"consumer_shards '{text}' selects none of the {self.stream_shards} shards")
        return chosen
