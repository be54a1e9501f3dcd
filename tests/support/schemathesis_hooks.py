"""schemathesis hooks for the query API (loaded by tests/aggregator/api/test_schemathesis.py).

A heatmap's ``start`` and ``end`` are each valid alone (any date), but OpenAPI cannot say that
``start`` must not come after ``end`` nor that the two span at most 366 days: such a pair gets
a 422 naming ``start`` (docs/api.md), which the positive_data_acceptance check would take for a
refusal of valid data. The generator is told the constraint here, so "valid" means valid;
every check stays on for every operation.

An experiment definition likewise: distinct variant names, ``ends_at`` after ``starts_at``, guardrail metrics
distinct and other than the primary one (each a 422 naming the field otherwise).
"""

from __future__ import annotations

from datetime import date, datetime
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


EXPERIMENTS = "/api/analytics/experiments"


def _valid_definition(body: dict[str, Any]) -> bool:
    variants = body.get("variants")
    if isinstance(variants, list):
        names = [v.get("name") for v in variants if isinstance(v, dict)]
        if len(set(map(str, names))) != len(names):
            return False
    guardrails = body.get("guardrail_metrics")
    if isinstance(guardrails, list) and (
        len(set(map(str, guardrails))) != len(guardrails) or body.get("primary_metric") in guardrails
    ):
        return False
    try:
        start = datetime.fromisoformat(str(body["starts_at"]))
        end = datetime.fromisoformat(str(body["ends_at"]))
    except (KeyError, ValueError, TypeError):
        return True
    try:
        return end > start
    except TypeError:  # one naive: the schema's own refusal
        return True


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if context.operation is None or context.operation.path != EXPERIMENTS or not isinstance(body, dict):
        return True
    return _valid_definition(body)
