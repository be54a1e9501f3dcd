"""Self-telemetry of the bus writers (exporter and gateway): counters kept in process and
mirrored to a small Redis hash with a TTL, written in the same round trip as the batch.

Key: ``{prefix}:stats:{role}:{host}:{pid}`` (``role`` is ``exporter``, ``log-exporter`` or ``gateway``).
Values are cumulative since the process started; ``bus stats`` sums them over all live
writers. A hash disappears ``STATS_TTL_S`` after its writer's last successful write.

A write's latency is known only once Redis has answered it, so the hash written with a batch
holds the latencies of the writes before it (one round trip per batch stays one); the last
write's latency reaches the hash with the writer's next write, or when the writer shuts down.
``export_latency_count`` counts the latencies in the hash (one per export call or gateway request,
which may write several shard batches), so ``sum / count`` is their exact mean.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field, fields

from .settings import BusSettings

STATS_TTL_S = 3600


def stats_key(settings: BusSettings, role: str, pid: int | None = None) -> str:
    return f"{settings.stream_prefix}:stats:{role}:{socket.gethostname()}:{pid or os.getpid()}"


def stats_pattern(settings: BusSettings) -> str:
    return f"{settings.stream_prefix}:stats:*"


@dataclass
class WriterStats:
    """Counters of one writer process (never values, only counts and timings)."""

    spans_exported: int = 0
    batches_exported: int = 0
    retries: int = 0
    spans_spooled: int = 0
    batches_spooled: int = 0
    spans_replayed: int = 0
    spans_dropped: int = 0
    export_failures: int = 0
    export_latency_ms_sum: float = 0.0
    export_latency_ms_max: float = 0.0
    export_latency_ms_last: float = 0.0
    export_latency_count: int = 0
    spool_batches: int = 0
    spool_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe_latency(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self.export_latency_ms_last = ms
        self.export_latency_ms_sum += ms
        self.export_latency_ms_max = max(self.export_latency_ms_max, ms)
        self.export_latency_count += 1

    def as_mapping(self) -> dict[str, str]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["updated_at"] = time.time()
        return {k: (f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in out.items()}

    def reset(self) -> None:
        for f in fields(self):
            if not f.name.startswith("_"):
                setattr(self, f.name, type(getattr(self, f.name))())
        self._lock = threading.Lock()


def summarize(hashes: list[dict[str, str]]) -> dict[str, float]:
    """Sum counters over writers; latency maximum is the maximum, mean is derived."""
    total: dict[str, float] = {}
    for mapping in hashes:
        for key, value in mapping.items():
            if key == "updated_at":
                continue
            try:
                number = float(value)
            except ValueError:
                continue
            if key.endswith("_max") or key.endswith("_last"):
                total[key] = max(total.get(key, 0.0), number)
            else:
                total[key] = total.get(key, 0.0) + number
    measured = total.get("export_latency_count") or total.get("batches_exported", 0.0)
    if measured:
        total["export_latency_ms_mean"] = total.get("export_latency_ms_sum", 0.0) / measured
    return total


def latency_mean(values: dict[str, str]) -> float:
    """Mean write latency (ms) of one writer's hash (writers before ``export_latency_count``:
    over its batches)."""
    measured = float(values.get("export_latency_count") or values.get("batches_exported") or 0)
    return float(values.get("export_latency_ms_sum") or 0) / measured if measured else 0.0
