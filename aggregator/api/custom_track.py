"""Custom events posted to ``POST /api/analytics/events/track``: an item whose ``type`` is a vendor-qualified
schema name carries ``data = {"version": "1-0-0", "properties": {...}}``.

Validated by the one validation (``instrumentation/custom_schemas.validate_event``) against the API
process's registry snapshot; a valid item is recorded through ``tracker.custom``; an invalid one is
rejected with each error (its ``loc`` ends with the JSON pointer's parts) and written to the failed-events
stream with the caller's pseudonym, so it can be replayed once its schema is registered or fixed. Its id is
deterministic (``failed_events.tracked_event_id``: from the ``Idempotency-Key`` header when the client sends
one) and its time the first attempt's (pinned in Redis), so a retried POST is replayed once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

from fastapi import Request

from ...exporter.failed_events import (
    MAX_LEN,
    PIN_SCRIPT,
    PIN_TTL_S,
    FailedEvent,
    add_commands,
    pin_key,
    protected,
    tracked_event_id,
)
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


async def _keep_failed(request: Request, failed: FailedEvent) -> None:
    """Pin the event's first time (a retry gets the same id and time: replay stores it once), then keep it."""
    settings = request.app.state.settings
    client = request.app.state.redis
    try:
        pinned = await client.eval(
            PIN_SCRIPT, 1, pin_key(settings, failed.event_id), failed.time_us, PIN_TTL_S
        )
        failed = dataclasses.replace(failed, time_us=int(pinned))
        for key, fields in add_commands(settings, [failed]):
            await client.xadd(key, fields, maxlen=MAX_LEN, approximate=True)
    except Exception as exc:  # the answer still names the errors; the loss is logged
        _log.warning("a failed custom event could not be kept: %s", type(exc).__name__)


async def track_custom(
    request: Request,
    caller: Principal,
    index: int,
    event_type: str,
    data: dict[str, Any],
    idempotency_key: str | None = None,
) -> TrackItemResult:
    version, properties, errors = custom_errors(index, event_type, data)
    tracker: StudyInTracker = request.app.state.tracker
    if not errors:
        try:
            tracker.custom(event_type, version, properties, user_id=caller.user_id)
            return TrackItemResult(index=index, type=event_type, status="accepted")
        except EventRejected as exc:  # the tracker's own snapshot disagrees (cannot: same registry)
            errors = [EventError("", exc.reasons)]
    now_us = time.time_ns() // 1000
    failed = FailedEvent(
        uuid.UUID(int=0),
        now_us,
        str(event_type),
        str(version) if version is not None else "",
        tuple(errors),
        _protected(event_type, version, properties, tracker),
        caller.user_hash,
        None,
        "track",
    )
    kept = failed.fields()
    content = {k: kept[k] for k in ("schema", "version", "properties")}
    event_id = tracked_event_id(caller.user_hash, idempotency_key, index, content, now_us // 60_000_000)
    await _keep_failed(request, dataclasses.replace(failed, event_id=event_id))
    return TrackItemResult(
        index=index,
        type=event_type,
        status="rejected",
        errors=[FieldError(loc=_loc(index, e), msg=e.reason, type="custom_schema") for e in errors],
    )
