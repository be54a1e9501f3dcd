"""The OTLP gateway's check of custom events, before the privacy guard: each ``studyin.custom`` span event
is validated by the one validation against the gateway's registry snapshot; an invalid one is taken out of
its span (replaced by a nameless placeholder, so the other events keep their positions and ids) and kept as
a failed event (:mod:`..failed_events`) with its deterministic id, to be replayed later."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ...instrumentation import semconv
from ...instrumentation.custom_schemas import CustomRegistry, describe_errors, validate_event
from ...instrumentation.custom_tracking import custom_properties
from .. import wire
from ..event_types import micros_of
from ..failed_events import FailedEvent, event_id, protected

PLACEHOLDER = "studyin_custom_failed"
"""Name of the placeholder left in a span for a failed custom event (not a domain event: no ``studyin.``)."""
_CUSTOM = semconv.event_name(semconv.CUSTOM_EVENT_TYPE)


def screen_custom(
    records: list[wire.SpanRecord],
    registry: CustomRegistry,
    pseudonymize: Callable[[str], str] | None,
) -> tuple[list[wire.SpanRecord], list[FailedEvent], Counter[str]]:
    """The records without their invalid custom events, those events as failed events, and their reasons."""
    failed: list[FailedEvent] = []
    reasons: Counter[str] = Counter()
    out: list[wire.SpanRecord] = []
    for record in records:
        events = record.events
        replaced: list[wire.EventRecord] | None = None
        for index, event in enumerate(events):
            if event.name != _CUSTOM:
                continue
            attributes = event.attributes
            name, version = attributes.get(semconv.CUSTOM_SCHEMA), attributes.get(semconv.CUSTOM_VERSION)
            properties = custom_properties(attributes)
            errors = validate_event(registry, name, version, properties)
            if not errors:
                continue
            reasons[describe_errors(errors)] += 1
            compiled = (
                registry.get(name, version) if isinstance(name, str) and isinstance(version, str) else None
            )
            user = attributes.get(semconv.USER_HASH, record.attributes.get(semconv.USER_HASH))
            session = attributes.get(semconv.FIELD_ATTRIBUTES["session_id"])
            failed.append(
                FailedEvent(
                    event_id(record.trace_id, record.span_id, index),
                    micros_of(event.time_unix_nano),
                    str(name),
                    str(version),
                    tuple(errors),
                    protected(properties, compiled.pseudonymous if compiled else None, pseudonymize),
                    user if isinstance(user, str) else None,
                    session if isinstance(session, str) else None,
                    "gateway",
                )
            )
            if replaced is None:
                replaced = list(events)
            replaced[index] = wire.EventRecord(PLACEHOLDER, event.time_unix_nano, {})
        out.append(record if replaced is None else record._replace(events=replaced))
    return out, failed, reasons
