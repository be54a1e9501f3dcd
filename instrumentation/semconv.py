"""Attribute and event names of StudyIn telemetry: the one place they are declared.

Domain events travel as OpenTelemetry span events named ``studyin.<event_type>``; each
field of an event model is carried as one attribute from :data:`FIELD_ATTRIBUTES`. The
user is ``user.hash`` (OpenTelemetry semantic conventions: "unique user hash to correlate
information for a user in anonymized form"), never ``user.id``.

Anything else in the ``studyin.`` namespace is undeclared and is rejected by the privacy
guard, so a typo cannot become a side channel for free text.
"""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "studyin."

# Instrumentation scope (tracer/meter name) of everything this package emits.
SCOPE_NAME: Final = "studyin_analytics"

# Identity.
USER_HASH: Final = "user.hash"
"""Keyed pseudonym of the StudyIn user, ``<key id>:<hex>`` (see privacy.Pseudonymizer)."""

# Envelope of every domain event.
EVENT_PREFIX: Final = "studyin."
"""Span events named ``studyin.<event_type>`` are domain events."""
EVENT_VERSION: Final = "studyin.event.version"

# The learning session span.
LEARNING_SESSION_SPAN: Final = "studyin.learning_session"
"""Name of the span that covers one learning session (its duration is the session's)."""
STANDALONE_EVENT_SPAN: Final = "studyin.event"
"""Name of the short span that carries an event emitted while no span is recording."""

# Model field name -> attribute name. Field names are unique across all event models.
FIELD_ATTRIBUTES: Final[dict[str, str]] = {
    "session_id": "studyin.session.id",
    "duration_s": "studyin.session.duration_s",
    "xp_earned": "studyin.session.xp_earned",
    "materials_touched": "studyin.session.materials_touched",
    "end_reason": "studyin.session.end_reason",
    "material_id": "studyin.material.id",
    "material_type": "studyin.material.type",
    "progress": "studyin.material.progress",
    "time_spent_s": "studyin.material.time_spent_s",
    "score": "studyin.material.score",
    "xp_amount": "studyin.xp.amount",
    "xp_reason": "studyin.xp.reason",
    "level": "studyin.level",
    "total_xp": "studyin.xp.total",
    "achievement_id": "studyin.achievement.id",
    "streak_days": "studyin.streak.days",
    "previous_streak_days": "studyin.streak.previous_days",
    "interaction_id": "studyin.ai.interaction_id",
    "latency_ms": "studyin.ai.latency_ms",
    "tokens_in": "studyin.ai.tokens_in",
    "tokens_out": "studyin.ai.tokens_out",
    "model": "studyin.ai.model",
    "topic_category": "studyin.ai.topic_category",
    "rating": "studyin.ai.rating",
    "metric_name": "studyin.system.metric.name",
    "metric_value": "studyin.system.metric.value",
    "metric_unit": "studyin.system.metric.unit",
    # System metrics (api_request) are read from HTTP semantic-convention attributes of
    # server spans; these carry what the conventions lack.
    "route": "studyin.api.route",
    "method": "studyin.api.method",
    "status_code": "studyin.api.status_code",
    "duration_ms": "studyin.api.duration_ms",
    "error_type": "studyin.api.error_type",
}

ATTRIBUTE_FIELDS: Final[dict[str, str]] = {attr: field for field, attr in FIELD_ATTRIBUTES.items()}

DECLARED_ATTRIBUTES: Final[frozenset[str]] = frozenset({*FIELD_ATTRIBUTES.values(), EVENT_VERSION})
"""Every ``studyin.*`` attribute that may leave the process."""

# HTTP server spans (auto-instrumentation). The aggregator reads these standard names.
HTTP_ROUTE: Final = "http.route"
UNMATCHED_ROUTE: Final = "_OTHER"
"""``http.route`` of an HTTP request no route template matched (404 scans, requests answered by a
middleware before routing): a fixed placeholder, never the raw path. ``_OTHER`` is OpenTelemetry's
spelling for a value outside the known set (as for ``http.request.method``); no template can be
spelled so (templates start with ``/``)."""
ERROR_TYPE: Final = "error.type"
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"
EXCEPTION_ESCAPED: Final = "exception.escaped"


def event_name(event_type: str) -> str:
    """Span-event name of a domain event type (``material_view`` -> ``studyin.material_view``)."""
    return EVENT_PREFIX + event_type


def event_type_of(name: str) -> str | None:
    """Inverse of :func:`event_name`; ``None`` for span events that are not domain events."""
    if name.startswith(EVENT_PREFIX):
        return name[len(EVENT_PREFIX) :]
    return None
