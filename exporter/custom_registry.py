"""The custom event registry in an application process: one call follows its Redis snapshot and makes
it the process's registry (what ``tracker.custom``, the privacy guard, the track endpoint and the OTLP
gateway validate against). See docs/custom-events.md."""

from __future__ import annotations

from ..instrumentation.custom_schemas import (
    EMPTY_REGISTRY,
    CustomRegistry,
    decode_snapshot,
    set_default_registry,
)
from .settings import BusSettings
from .snapshots import SnapshotFollower

SNAPSHOT_KIND = "custom-schemas"


def follow_custom_schemas(
    settings: BusSettings, refresh_interval_s: float = 30.0
) -> SnapshotFollower[CustomRegistry]:
    """Start following the registry's snapshot and make it this process's default registry."""
    url = settings.redis_url or ""
    follower = SnapshotFollower(
        url,
        f"{settings.stream_prefix}:",
        SNAPSHOT_KIND,
        decode_snapshot,
        EMPTY_REGISTRY,
        refresh_interval_s,
        cluster=settings.redis_cluster,
    )
    follower.start()
    set_default_registry(follower.current)
    return follower
