"""``tracker.custom(...)``: custom events of registered schemas, validated against the local snapshot.

The registry is whatever the tracker's :attr:`~CustomEventsMixin.custom_registry` source returns (by
default the process's, :func:`.custom_schemas.set_default_registry`, which
``exporter.custom_registry.follow_custom_schemas`` keeps current from Redis): a dict lookup and one
``jsonschema-rs`` check, no I/O. An invalid event is refused like an invalid built-in one
(:class:`~.tracker.EventRejected`, or counted and logged in lenient mode) with the same reasons the
track endpoint, the OTLP gateway and the aggregator give (:func:`.custom_schemas.describe_errors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from . import semconv
from .custom_schemas import RegistrySource, default_registry, describe_errors, validate_event
from .sessions import LearningSession, current_session

if TYPE_CHECKING:
    from .tracker import EventRejected, StudyInTracker


def custom_attributes(name: str, version: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """The span-event attributes of a custom event (before its user and session)."""
    attributes: dict[str, Any] = {semconv.CUSTOM_SCHEMA: name, semconv.CUSTOM_VERSION: version}
    prefix = semconv.CUSTOM_PROPERTY_PREFIX
    for key, value in properties.items():
        attributes[prefix + key] = tuple(value) if isinstance(value, list) else value
    return attributes


def custom_properties(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The properties of a custom event back from its attributes (arrays as lists)."""
    prefix, cut = semconv.CUSTOM_PROPERTY_PREFIX, len(semconv.CUSTOM_PROPERTY_PREFIX)
    return {
        key[cut:]: list(value) if isinstance(value, tuple) else value
        for key, value in attributes.items()
        if key.startswith(prefix)
    }


_EVENT_NAME = semconv.event_name(semconv.CUSTOM_EVENT_TYPE)


def _rejected(schema: Any, reasons: str) -> EventRejected:
    # Imported here, on the refusal path only: the tracker imports this module, and a function-level
    # import on every call cost ~1 µs of the ~3 µs validation budget (bench custom_events).
    from .tracker import EventRejected

    label = schema if isinstance(schema, str) and len(schema) <= 200 else semconv.CUSTOM_EVENT_TYPE
    return EventRejected(label, reasons)


class CustomEventsMixin:
    """Adds :meth:`custom` to :class:`~.tracker.StudyInTracker`."""

    custom_registry: RegistrySource = staticmethod(default_registry)

    def use_custom_registry(self, source: RegistrySource) -> None:
        """Validate custom events against ``source()`` (e.g. a ``SnapshotFollower``'s ``current``)."""
        self.custom_registry = source

    def custom(
        self,
        schema: str,
        version: str,
        properties: Mapping[str, Any],
        *,
        user_id: str | int | None = None,
        session: LearningSession | None = None,
        require_user: bool = True,
    ) -> dict[str, Any] | None:
        """Record a custom event of the registered ``schema`` at ``version``; returns its attributes,
        or ``None`` when dropped in lenient mode (strict mode raises ``EventRejected``)."""
        tracker = cast("StudyInTracker", self)
        errors = validate_event(self.custom_registry(), schema, version, properties)
        if errors:
            tracker._reject(_rejected(schema, describe_errors(errors)))
            return None
        session = session if session is not None else current_session()
        user_hash: str | None = None
        lrs_hash: str | None = None
        try:
            user_hash = tracker.user_hash(user_id)
            lrs_hash = tracker.lrs_hash(user_id)
        except TypeError as exc:
            tracker._reject(_rejected(schema, f"user_id: {exc}"))
            return None
        if user_hash is None and session is not None:
            user_hash, lrs_hash = session.user_hash or None, session.lrs_hash
        if user_hash is None and require_user:
            tracker._reject(_rejected(schema, "user_id: required for this event"))
            return None
        attributes = custom_attributes(schema, version, properties)
        if user_hash is not None:
            attributes[semconv.USER_HASH] = user_hash
            if lrs_hash is not None:
                attributes[semconv.USER_LRS_HASH] = lrs_hash
        if session is not None:
            attributes[semconv.FIELD_ATTRIBUTES["session_id"]] = str(session.session_id)
        tracker.carrier.record(_EVENT_NAME, attributes, session, lifecycle=False)
        return attributes
