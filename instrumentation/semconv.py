"""Attribute and event names of StudyIn telemetry: the one place they are declared.

Domain events travel as OpenTelemetry span events named ``studyin.<event_type>``; each
field of an event model is carried as one attribute from :data:`FIELD_ATTRIBUTES`. The
user is ``user.hash`` (OpenTelemetry semantic conventions: "unique user hash to correlate
information for a user in anonymized form"), never ``user.id``.

Anything else in the ``studyin.`` namespace is undeclared and is rejected by the privacy
guard, so a typo cannot become a side channel for free text; a declared attribute must have
its declared type (:data:`ATTRIBUTE_TYPES`) or is rejected too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

NAMESPACE: Final = "studyin."

# Instrumentation scope (tracer/meter name) of everything this package emits.
SCOPE_NAME: Final = "studyin_analytics"

# Identity.
USER_HASH: Final = "user.hash"
"""Keyed pseudonym of the StudyIn user, ``<key id>:<32 hex>``: HMAC-SHA256 truncated to 128 bits
(see privacy.Pseudonymizer)."""
USER_LRS_HASH: Final = "user.lrs_hash"
"""The learner's pseudonym for a Learning Record Store: same format, under the LRS key (its own, never
rotated with the analytics key), set only when one is configured (docs/xapi.md, "The actor")."""
USER_PREVIOUS_HASH: Final = "user.previous_hash"
"""The learner's pseudonym under the previous analytics key, sent only during a key rotation's
transition (``pseudonym_previous_key_id``): it links the two pseudonyms of one learner
(docs/analytics.md, "Key rotation")."""

# Envelope of every domain event.
EVENT_PREFIX: Final = "studyin."
"""Span events named ``studyin.<event_type>`` are domain events."""
EVENT_VERSION: Final = "studyin.event.version"

# The learning session span.
LEARNING_SESSION_SPAN: Final = "studyin.learning_session"
"""Name of the span that covers one learning session (its duration is the session's)."""
STANDALONE_EVENT_SPAN: Final = "studyin.event"
"""Name of the short span that carries an event emitted while no span is recording."""
EVENT_UID: Final = "studyin.event.uid"
"""Log-record events: 32 hex digits, random, drawn when the event is emitted; the exporters move it
into the wire's log row (the event's identity on the bus), never into the event's properties."""


class AttributeType(StrEnum):
    """The value type a declared attribute must have (OTLP ``AnyValue`` names).

    The privacy guard refuses a declared attribute of any other type: a kvlist or a free-form
    array under ``studyin.material.id`` would otherwise reach ``analytics_events.properties``
    whole, nested identity and all.
    """

    STRING = "string"
    INT = "int"
    DOUBLE = "double"
    """A number: ints are accepted too (OTLP senders encode ``12.0`` as ``intValue`` 12)."""
    STRING_ARRAY = "string[]"


# Model field name, attribute name, value type. Field names are unique across all event models;
# the types agree with the models in events.py (a test checks).
FIELDS: Final[tuple[tuple[str, str, AttributeType], ...]] = (
    ("session_id", "studyin.session.id", AttributeType.STRING),
    ("duration_s", "studyin.session.duration_s", AttributeType.DOUBLE),
    ("xp_earned", "studyin.session.xp_earned", AttributeType.INT),
    ("materials_touched", "studyin.session.materials_touched", AttributeType.STRING_ARRAY),
    ("end_reason", "studyin.session.end_reason", AttributeType.STRING),
    ("material_id", "studyin.material.id", AttributeType.STRING),
    ("material_type", "studyin.material.type", AttributeType.STRING),
    ("progress", "studyin.material.progress", AttributeType.DOUBLE),
    ("time_spent_s", "studyin.material.time_spent_s", AttributeType.DOUBLE),
    ("score", "studyin.material.score", AttributeType.DOUBLE),
    ("xp_amount", "studyin.xp.amount", AttributeType.INT),
    ("xp_reason", "studyin.xp.reason", AttributeType.STRING),
    ("level", "studyin.level", AttributeType.INT),
    ("total_xp", "studyin.xp.total", AttributeType.INT),
    ("achievement_id", "studyin.achievement.id", AttributeType.STRING),
    ("streak_days", "studyin.streak.days", AttributeType.INT),
    ("previous_streak_days", "studyin.streak.previous_days", AttributeType.INT),
    ("interaction_id", "studyin.ai.interaction_id", AttributeType.STRING),
    ("latency_ms", "studyin.ai.latency_ms", AttributeType.DOUBLE),
    ("tokens_in", "studyin.ai.tokens_in", AttributeType.INT),
    ("tokens_out", "studyin.ai.tokens_out", AttributeType.INT),
    ("model", "studyin.ai.model", AttributeType.STRING),
    ("topic_category", "studyin.ai.topic_category", AttributeType.STRING),
    ("rating", "studyin.ai.rating", AttributeType.INT),
    ("experiment_key", "studyin.experiment.key", AttributeType.STRING),
    ("experiment_version", "studyin.experiment.version", AttributeType.INT),
    ("variant", "studyin.experiment.variant", AttributeType.STRING),
    ("metric_name", "studyin.system.metric.name", AttributeType.STRING),
    ("metric_value", "studyin.system.metric.value", AttributeType.DOUBLE),
    ("metric_unit", "studyin.system.metric.unit", AttributeType.STRING),
    # System metrics (api_request) are read from HTTP semantic-convention attributes of
    # server spans; these carry what the conventions lack.
    ("route", "studyin.api.route", AttributeType.STRING),
    ("method", "studyin.api.method", AttributeType.STRING),
    ("status_code", "studyin.api.status_code", AttributeType.INT),
    ("duration_ms", "studyin.api.duration_ms", AttributeType.DOUBLE),
    ("error_type", "studyin.api.error_type", AttributeType.STRING),
)

FIELD_ATTRIBUTES: Final[dict[str, str]] = {field: attribute for field, attribute, _ in FIELDS}
"""Model field name -> attribute name."""

ATTRIBUTE_FIELDS: Final[dict[str, str]] = {attr: field for field, attr in FIELD_ATTRIBUTES.items()}

ATTRIBUTE_TYPES: Final[dict[str, AttributeType]] = {
    **{attribute: kind for _, attribute, kind in FIELDS},
    EVENT_VERSION: AttributeType.INT,
}
"""Declared attribute -> the only value type it may have."""

DECLARED_ATTRIBUTES: Final[frozenset[str]] = frozenset(ATTRIBUTE_TYPES)
"""Every ``studyin.*`` attribute that may leave the process."""

# Custom events (registered schemas, docs/custom-events.md): one span event ``studyin.custom`` each, naming
# its schema and SchemaVer version; each property travels as ``studyin.custom.p.<name>``, which the privacy
# guard allows exactly as the registered schema declares it (custom_schemas.allow_custom), else refuses.
CUSTOM_EVENT_TYPE: Final = "custom"
CUSTOM_NAMESPACE: Final = "studyin.custom."
CUSTOM_SCHEMA: Final = "studyin.custom.schema"
CUSTOM_VERSION: Final = "studyin.custom.version"
CUSTOM_PROPERTY_PREFIX: Final = "studyin.custom.p."

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
