"""Tracking route: events posted by the frontend, validated per item, emitted through the tracker.

They take the backend's path: tracker -> span events -> privacy guard -> Redis exporter.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import ValidationError

from ...instrumentation import events, semconv
from ...instrumentation.tracker import EventRejected, StudyInTracker
from .auth import Principal
from .custom_track import is_custom_type, track_custom
from .deps import PREFIX, AppSettings, Caller
from .models import FieldError, Problem, TrackItemResult, TrackRequest, TrackResponse
from .problems import ERROR_RESPONSES
from .settings import ApiSettings as Settings

_log = logging.getLogger("studyin_analytics.aggregator.api.app")

TRACK_PATH = f"{PREFIX}/events/track"

CLIENT_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "session_start",
        "session_end",
        "material_view",
        "material_progress",
        "material_complete",
        "ai_coach_feedback",
    }
)
"""Event types the frontend may report. XP, levels, achievements, streaks, AI-coach usage and
API requests are recorded by the backend, which is their authority; a client cannot mint them."""

router = APIRouter()

Valid = list[tuple[int, type[events.DomainEvent], dict[str, Any]]]


def client_item_errors(
    settings: Settings, index: int, event_type: str, data: dict[str, Any]
) -> tuple[type[events.DomainEvent] | None, list[FieldError]]:
    """The model of one tracked item and what is wrong with it (nothing: it may be emitted).

    Beyond the domain model's checks, what a client reports is held to what a client may know:
    a session's ``duration_s`` is at most ``client_session_max_s`` (docs/api.md, per event type).
    """
    loc: list[str | int] = ["body", "events", index]
    model = events.EVENT_TYPES.get(event_type)
    if model is None or event_type not in CLIENT_EVENT_TYPES:
        reason = "unknown event type" if model is None else "clients may not report this event type"
        return None, [FieldError(loc=[*loc, "type"], msg=reason, type="event_type")]
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        return model, [
            FieldError(
                loc=[*loc, "data", *[p if isinstance(p, int) else str(p) for p in e["loc"]]],
                msg=e["msg"],
                type=e["type"],
            )
            for e in exc.errors(include_input=False, include_url=False)
        ]
    if isinstance(event, events.SessionEnd) and event.duration_s > settings.client_session_max_s:
        limit = f"{settings.client_session_max_s:g}"
        return model, [
            FieldError(
                loc=[*loc, "data", "duration_s"],
                msg=f"a client may report a session of at most {limit} s (client_session_max_s)",
                type="less_than_equal",
            )
        ]
    return model, []


def _emit(request: Request, caller: Principal, valid: Valid, results: list[TrackItemResult]) -> None:
    """Emits the valid items; an item the tracker's own checks refuse becomes a rejection."""
    tracker: StudyInTracker = request.app.state.tracker
    tracer = request.app.state.tracer
    # One short span per request carries the batch, attributed to the caller's pseudonym.
    with tracer.start_as_current_span(
        semconv.STANDALONE_EVENT_SPAN, attributes={semconv.USER_HASH: caller.user_hash}
    ):
        for index, model, data in valid:
            try:
                tracker.emit(model, user_id=caller.user_id, **data)
            except EventRejected as exc:  # the tracker's own checks (beyond the model)
                results[index] = TrackItemResult(
                    index=index,
                    type=model.event_type,
                    status="rejected",
                    errors=[FieldError(loc=["body", "events", index], msg=str(exc), type="rejected")],
                )


@router.post(
    TRACK_PATH,
    response_model=TrackResponse,
    status_code=202,
    responses={
        **ERROR_RESPONSES,
        400: {"model": Problem, "description": "Body is not decodable (e.g. not UTF-8)"},
        413: {"model": Problem, "description": "Body larger than the configured limit"},
    },
    tags=["events"],
)
async def track_events(
    request: Request,
    caller: Caller,
    settings: AppSettings,
    body: TrackRequest,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Same value on a retry of the same POST: a refused custom event keeps one id "
            "(so `failed-events replay` stores it once)",
        ),
    ] = None,
) -> TrackResponse:
    """Record frontend events for the caller; each item is validated on its own.

    Accepted items are emitted through the tracker (attributed to the caller's pseudonym)
    and reach the bus through the privacy guard and the Redis exporter.
    """
    results: list[TrackItemResult] = []
    valid: Valid = []
    for index, item in enumerate(body.events):
        if is_custom_type(item.type):  # custom events: custom_track.py
            results.append(await track_custom(request, caller, index, item.type, item.data, idempotency_key))
            continue
        model, errors = client_item_errors(settings, index, item.type, item.data)
        if errors or model is None:
            results.append(TrackItemResult(index=index, type=item.type, status="rejected", errors=errors))
            continue
        valid.append((index, model, item.data))
        results.append(TrackItemResult(index=index, type=item.type, status="accepted"))
    if valid:
        _emit(request, caller, valid, results)
    accepted = sum(1 for r in results if r.status == "accepted")
    if accepted < len(results):
        # Counts only: the items' types and fields are what the client sent.
        _log.info("events/track rejected %d of %d items", len(results) - accepted, len(results))
    return TrackResponse(accepted=accepted, rejected=len(results) - accepted, results=results)
