"""schemathesis hooks for the query API (loaded by tests/aggregator/api/test_schemathesis.py).

A heatmap's ``start`` and ``end`` are each valid alone (any date), but OpenAPI cannot say that
``start`` must not come after ``end`` nor that the two span at most 366 days: such a pair gets
a 422 naming ``start`` (docs/api.md), which the positive_data_acceptance check would take for a
refusal of valid data. The generator is told the constraint here, so "valid" means valid;
every check stays on for every operation.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import schemathesis

HEATMAP = "/api/analytics/learning/heatmap"
MAX_DAYS = 366


@schemathesis.hook
def filter_query(context: Any, query: dict[str, Any] | None) -> bool:
    if context.operation is None or context.operation.path != HEATMAP or not query:
        return True
    try:
        start, end = date.fromisoformat(str(query["start"])), date.fromisoformat(str(query["end"]))
    except (KeyError, ValueError, TypeError):
        return True  # not both, or not dates: nothing the schema cannot say
    return start <= end and (end - start).days < MAX_DAYS
