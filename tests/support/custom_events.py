"""Builders for custom event tests: schemas and bus spans carrying custom events."""

from __future__ import annotations

import random
import time
from typing import Any

from studyin_analytics.exporter import wire
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.custom_tracking import custom_attributes
from studyin_analytics.instrumentation.privacy import Pseudonymizer

CASE = "org.example/case_completed"
QUIZ = "org.example/quiz_answered"


def case_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["case_id", "score"],
        "properties": {
            "case_id": {"type": "string", "maxLength": 64},
            "score": {"type": "number", "minimum": 0, "maximum": 100},
            "passed": {"type": "boolean"},
        },
    }


def quiz_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "quiz": {"type": "string", "pattern": "^q[0-9]+$"},
            "correct": {"type": "boolean"},
        },
    }


def custom_span(
    pseudonymizer: Pseudonymizer,
    events: list[tuple[str, str, dict[str, Any], int]],
    learner: str = "custom-learner",
) -> SpanRecord:
    """One span carrying custom events ``(schema, version, properties, time_ns)``."""
    user = pseudonymizer.pseudonymize(learner)
    records = [
        EventRecord(
            semconv.event_name(semconv.CUSTOM_EVENT_TYPE),
            at,
            {**custom_attributes(name, version, props), semconv.USER_HASH: user},
        )
        for name, version, props, at in events
    ]
    end = max(at for *_, at in events) if events else time.time_ns()
    return SpanRecord(
        random.randbytes(16),
        random.randbytes(8),
        None,
        semconv.STANDALONE_EVENT_SPAN,
        wire.SPAN_KIND_INTERNAL,
        end - 1000,
        end,
        0,
        {semconv.USER_HASH: user},
        records,
        {"service.name": "custom-events"},
    )


def entry_of(spans: list[SpanRecord]) -> dict[Any, Any]:
    return wire.entry_fields(wire.encode(spans), len(spans))
