"""Event rows for the LRS tests, produced by the real path: the tracker emits the event, the SDK records the
span, the privacy guard and the wire format export it, and the aggregator's own ``rows_from_span`` maps it
to event rows. The tracker's pseudonymizer holds a test LRS key, so the rows carry the LRS pseudonym
(``user.lrs_hash`` on the wire, ``lrs_actor`` in the row) as the app sends it (docs/xapi.md, "The actor")."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from studyin_analytics.aggregator.consumer.mapping import EventRow, rows_from_span
from studyin_analytics.aggregator.lrs.xapi import Skipped, Statement, StatementMapper, XapiConfig
from studyin_analytics.exporter.wire import decode_batch, encode_readable_spans
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker, events
from studyin_analytics.instrumentation.privacy import PrivacyGuard

ANALYTICS_KEYS = {
    "k2": {"k2": b"analytics-key-two-0123456789", "k1": b"analytics-key-one-0123456789"},
    "k1": {"k1": b"analytics-key-one-0123456789"},
}
"""The analytics keys configured while each key id was the active one."""
ANALYTICS = Pseudonymizer(ANALYTICS_KEYS["k2"], "k2")
ANALYTICS_BEFORE_ROTATION = Pseudonymizer(ANALYTICS_KEYS["k1"], "k1")
LRS = Pseudonymizer({"lrs1": b"lrs-key-of-its-own-0123456789"}, "lrs1")
CONFIG = XapiConfig(iri_base="https://xapi.studyin.test", home_page="https://studyin.test")
USER = "learner-4711"


class UrandomIds(IdGenerator):
    """Span and trace ids from os.urandom: hypothesis seeds the ``random`` module per example, which would
    give two examples the same ids, hence the same event ids."""

    def generate_span_id(self) -> int:
        return int.from_bytes(os.urandom(8), "big") or 1

    def generate_trace_id(self) -> int:
        return int.from_bytes(os.urandom(16), "big") or 1


Emission = tuple[str, type[events.DomainEvent], dict[str, Any]]
"""(raw user id, event model, fields) as app code would hand them to the tracker."""


def rows_through_pipeline(
    emissions: Iterable[Emission], analytics: Pseudonymizer = ANALYTICS, lrs: Pseudonymizer | None = LRS
) -> list[EventRow]:
    """The event rows of ``emissions`` as the aggregator would store them, plus the LRS pseudonym
    (left out when ``lrs`` is ``None``: an app that does not carry it yet)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=UrandomIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pseudonymizer = Pseudonymizer(ANALYTICS_KEYS[analytics.active_key_id], analytics.active_key_id, lrs=lrs)
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
    for user_id, model, fields in emissions:
        tracker.emit(model, user_id=user_id, **fields)
    blob = encode_readable_spans(exporter.get_finished_spans(), PrivacyGuard(pseudonymizer))
    return [row for record in decode_batch(blob) for row in rows_from_span(record)]


SESSION = uuid.UUID("0b7f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4")
INTERACTION = uuid.UUID("5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9")

SAMPLES: dict[str, list[dict[str, Any]]] = {
    "session_start": [{"session_id": SESSION}, {"session_id": SESSION, "material_id": "cardio-101"}],
    "session_end": [
        {
            "session_id": SESSION,
            "duration_s": 3723.456,
            "xp_earned": 40,
            "materials_touched": ("cardio-101", "ecg-basics", "cardio-101"),
        },
        {"session_id": SESSION, "duration_s": 0.0, "end_reason": "abandoned"},
        {"session_id": SESSION, "duration_s": 604800.0, "end_reason": "timeout"},
    ],
    "material_view": [
        {"material_id": f"m-{kind.value}", "material_type": kind.value, "session_id": SESSION}
        for kind in events.MaterialType
    ],
    "material_progress": [
        {"material_id": "ecg-basics", "material_type": "video", "progress": value}
        for value in (0.0, 0.295, 1.0)
    ],
    "material_complete": [
        {"material_id": "ecg-basics", "material_type": "video", "time_spent_s": 95.5, "score": 0.85},
        {"material_id": "qbank-7", "material_type": "question_bank"},
    ],
    "xp_awarded": [{"xp_amount": 25, "xp_reason": "quiz.correct", "session_id": SESSION}],
    "level_up": [{"level": 5, "total_xp": 1200}],
    "achievement_unlocked": [{"achievement_id": "first-week"}],
    "streak_updated": [{"streak_days": 7}],
    "streak_broken": [{"previous_streak_days": 12}],
    "ai_coach_interaction": [
        {
            "interaction_id": INTERACTION,
            "latency_ms": 812.5,
            "tokens_in": 120,
            "tokens_out": 380,
            "model": "gpt-4o-mini",
            "topic_category": "cardiology",
        }
    ],
    "ai_coach_feedback": [{"interaction_id": INTERACTION, "rating": r} for r in (1, 3, 5)],
    "api_request": [
        {"route": "/api/materials/{id}", "method": "GET", "status_code": 200, "duration_ms": 12.0}
    ],
    "system_metric": [{"metric_name": "queue.depth", "metric_value": 3.0}],
    "experiment_exposure": [
        {"experiment_key": "coach-prompt", "experiment_version": 1, "variant": "control"}
    ],
}
"""Fields of events of every type (several variants where the mapping branches)."""


def sample_rows(event_type: str, user: str = USER) -> list[EventRow]:
    model = events.EVENT_TYPES[event_type]
    return rows_through_pipeline((user, model, fields) for fields in SAMPLES[event_type])


def all_sample_rows() -> list[EventRow]:
    return [row for event_type in SAMPLES for row in sample_rows(event_type)]


def by_type(rows: Sequence[EventRow], event_type: str) -> list[EventRow]:
    return [row for row in rows if row.event_type == event_type]


MAPPER = StatementMapper(CONFIG)


def mapped(event_type: str, user: str = "learner-4711") -> list[Statement]:
    out = [MAPPER.map(row) for row in sample_rows(event_type, user)]
    assert out and not any(isinstance(s, Skipped) for s in out)
    return out  # type: ignore[return-value]
