"""Custom events posted to ``POST /api/analytics/events/track``: an item whose ``type`` is a vendor-qualified
schema name carries ``data = {"version": "1-0-0", "properties": {...}}``.

Validated by the one validation (``instrumentation/custom_schemas.validate_event``) against the API
process's registry snapshot; a valid item is recorded through ``tracker.custom``; an invalid one is
rejected with each error (its ``loc`` ends with the JSON pointer's parts) and written to the failed-events
stream with the caller's pseudonym, so it can be replayed once its schema is registered or fixed.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import Request

from ...exporter.failed_events import MAX_LEN, FailedEvent, add_commands, protected
from ...instrumentation.custom_schemas import EventError, default_registry, validate_event
from ...instrumentation.tracker import EventRejected, StudyInTracker
from .auth import Principal
from .models import FieldError, TrackItemResult

_log = logging.getLogger("studyin_analytics.aggregator.api.app")


def is_custom_type(event_type: str) -> bool:
    return "/" in event_type


def _loc(index: int, error: EventError) -> list[str | int]:
    base: list[str | int] = ["body", "events", index]
    if not error.pointer:
        return [*base, "type"] if "schema" in error.reason else [*base, "data"]
    parts = [p.replace("~1", "/").replace("~0", "~") for p in error.pointer.split("/")[1:]]
    return [*base, "data", "properties", *[int(p) if p.isdigit() else p for p in parts]]


def custom_errors(index: int, event_type: str, data: dict[str, Any]) -> tuple[Any, Any, list[EventError]]:
    """The claimed version, the properties and the errors of one tracked custom item."""
    version, properties = data.get("version"), data.get("properties", {})
    extra = sorted(set(data) - {"version", "properties"})
    errors = validate_event(default_registry(), event_type, version, properties)
    errors += [
        EventError("", f"data.{key} is not a custom event field (version, properties)") for key in extra
    ]
    return version, properties, errors


def _protected(event_type: str, version: Any, properties: Any, tracker: StudyInTracker) -> dict[str, Any]:
    """What a failed event may keep of ``properties`` (identifiers HMAC'd: failed_events.protected)."""
    if not isinstance(properties, dict):
        return {}
    compiled = default_registry().get(event_type, version) if isinstance(version, str) else None
    pseudonymous = compiled.pseudonymous if compiled is not None else None
    return protected(properties, pseudonymous, tracker.pseudonymizer.pseudonymize)


async def track_custom(
    request: Request, caller: Principal, index: int, event_type: str, data: dict[str, Any]
) -> TrackItemResult:
    version, properties, errors = custom_errors(index, event_type, data)
    tracker: StudyInTracker = request.app.state.tracker
    if not errors:
        try:
            tracker.custom(event_type, version, properties, user_id=caller.user_id)
            return TrackItemResult(index=index, type=event_type, status="accepted")
        except EventRejected as exc:  # the tracker's own snapshot disagrees (cannot: same registry)
            errors = [EventError("", exc.reasons)]
    failed = FailedEvent(
        uuid.uuid4(),
        time.time_ns() // 1000,
        str(event_type),
        str(version) if version is not None else "",
        tuple(errors),
        _protected(event_type, version, properties, tracker),
        caller.user_hash,
        None,
        "track",
    )
    try:
        for key, fields in add_commands(request.app.state.settings, [failed]):
            await request.app.state.redis.xadd(key, fields, maxlen=MAX_LEN, approximate=True)
    except Exception as exc:  # the answer still names the errors; the loss is logged
        _log.warning("a failed custom event could not be kept: %s", type(exc).__name__)
    return TrackItemResult(
        index=index,
        type=event_type,
        status="rejected",
        errors=[FieldError(loc=_loc(index, e), msg=e.reason, type="custom_schema") for e in errors],
    )
