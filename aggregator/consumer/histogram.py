"""Mergeable latency histograms: DDSketch-style logarithmic buckets.

A positive value ``x`` falls in bucket ``k = ceil(ln(x) / ln(GAMMA))`` with
``GAMMA = (1 + ALPHA) / (1 - ALPHA)``; bucket ``k`` covers ``(GAMMA**(k-1), GAMMA**k]`` and
is represented by ``2 * GAMMA**k / (GAMMA + 1)``, which is within a relative error ``ALPHA``
of every value in the bucket. A histogram is a map ``{bucket: count}``; two histograms merge
by adding counts per bucket (in SQL: ``count_map_sum``), so per-minute histograms sum to any
window. The q-quantile estimate (rank ``floor(q * (n - 1))``, the lower exact quantile) is
within relative error ``ALPHA`` of the exact one (Masson et al., DDSketch, VLDB 2019).

With ALPHA = 1 %, latencies from 1 µs to 10 minutes use at most ~1,700 distinct buckets;
a route-minute typically touches a few dozen. The SQL twin of this module is in migration
0002 (``hist_quantile``); ``tests/aggregator`` checks that they agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
"""``ln(GAMMA)``; ``hist_quantile`` (migration 0002) reads buckets back with the same ``GAMMA``."""
MIN_VALUE = 1e-6
"""Values at or below this (ms) are counted in :data:`MIN_KEY` and read back as 0."""
MIN_KEY = -1_000_000


def bucket(value: float) -> int:
    """Bucket key of ``value``."""
    if value <= MIN_VALUE:
        return MIN_KEY
    return math.ceil(math.log(value) / LOG_GAMMA)


def bucket_value(key: int) -> float:
    """Representative value of bucket ``key`` (relative error <= ALPHA for its members)."""
    if key == MIN_KEY:
        return 0.0
    return 2.0 * GAMMA**key / (GAMMA + 1.0)


def add(histogram: dict[str, int], value: float, count: int = 1) -> None:
    """Count ``value`` into ``histogram`` (keys are strings, as in the JSONB column)."""
    key = str(bucket(value))
    histogram[key] = histogram.get(key, 0) + count


def merge(histograms: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for histogram in histograms:
        for key, count in histogram.items():
            out[key] = out.get(key, 0) + int(count)
    return out


def quantile(histogram: Mapping[str, int], q: float) -> float | None:
    """The q-quantile estimate (``None`` for an empty histogram)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    items = sorted((int(k), int(c)) for k, c in histogram.items() if int(c) > 0)
    total = sum(c for _, c in items)
    if total == 0:
        return None
    rank = math.floor(q * (total - 1))
    seen = 0
    for key, count in items:
        seen += count
        if seen > rank:
            return bucket_value(key)
    return bucket_value(items[-1][0])  # pragma: no cover - unreachable (seen == total > rank)
