"""The tracker API: how app code reports StudyIn domain events.

Events are validated by their pydantic model, then carried as OpenTelemetry span events:
on the learning-session span when one is given, else on the current recording span, else
on a short span of their own. The user id is pseudonymized here, before anything is
recorded. Nothing in this module does I/O; exporting happens later, off the hot path, in
the span processor's worker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, TracerProvider
from pydantic import ValidationError

from . import events, semconv
from .privacy import Pseudonymizer
from .settings import get_settings
from .version import __version__

_log = logging.getLogger(__name__)


class EventRejected(ValueError):
    """An event failed validation; the message names each field and the reason (not values)."""

    def __init__(self, event_type: str, error: ValidationError | str) -> None:
        if isinstance(error, ValidationError):
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or '<event>'}: {item['msg']}"
                for item in error.errors(include_input=False, include_url=False)
            )
        else:
            reasons = error
        super().__init__(f"invalid {event_type} event: {reasons}")
        self.event_type = event_type


class LearningSession:
    """A running learning session; ends once, through :meth:`end` or leaving its ``with`` block."""

    __slots__ = ("_ended", "_started", "_tracker", "session_id", "span", "user_hash")

    def __init__(self, tracker: StudyInTracker, span: Span, session_id: uuid.UUID, user_hash: str | None):
        self._tracker = tracker
        self.span = span
        self.session_id = session_id
        self.user_hash = user_hash
        self._started = time.monotonic()
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def end(
        self,
        *,
        xp_earned: int = 0,
        materials_touched: Iterable[str] = (),
        end_reason: events.SessionEndReason | str = events.SessionEndReason.COMPLETED,
    ) -> None:
        """End the session: records ``session_end`` with its computed duration and ends the span."""
        if self._ended:
            return
        self._ended = True
        try:
            self._tracker.emit(
                events.SessionEnd,
                session=self,
                session_id=self.session_id,
                duration_s=self.elapsed_s(),
                xp_earned=xp_earned,
                materials_touched=tuple(materials_touched),
                end_reason=end_reason,
            )
        finally:
            self.span.end()

    def __enter__(self) -> LearningSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._ended:
            reason = events.SessionEndReason.ABANDONED if exc_type else events.SessionEndReason.COMPLETED
            self.end(end_reason=reason)

    async def __aenter__(self) -> LearningSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class StudyInTracker:
    """Emits StudyIn domain events as OpenTelemetry span events.

    ``lenient=True`` is for production: an invalid event is counted in
    :attr:`dropped_events` and logged (type and field names, never values) instead of raising.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        pseudonymizer: Pseudonymizer | None = None,
        lenient: bool = False,
    ) -> None:
        self._tracer = trace.get_tracer(semconv.SCOPE_NAME, __version__, tracer_provider=tracer_provider)
        self._pseudonymizer = pseudonymizer
        self.lenient = lenient
        self.dropped_events = 0

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        if self._pseudonymizer is None:
            self._pseudonymizer = Pseudonymizer.from_settings(get_settings())
        return self._pseudonymizer

    def user_hash(self, user_id: str | int | None) -> str | None:
        return None if user_id is None else self.pseudonymizer.pseudonymize(str(user_id))

    # --- sessions ---------------------------------------------------------------------------

    def start_session(
        self,
        user_id: str | int,
        *,
        material_id: str | None = None,
        session_id: uuid.UUID | None = None,
    ) -> LearningSession:
        """Start a learning session; use the result as a context manager or call ``end()``."""
        session_id = session_id or uuid.uuid4()
        user_hash = self.user_hash(user_id)
        attributes: dict[str, Any] = {semconv.FIELD_ATTRIBUTES["session_id"]: str(session_id)}
        if user_hash is not None:
            attributes[semconv.USER_HASH] = user_hash
        span = self._tracer.start_span(semconv.LEARNING_SESSION_SPAN, attributes=attributes)
        session = LearningSession(self, span, session_id, user_hash)
        self.emit(events.SessionStart, session=session, session_id=session_id, material_id=material_id)
        return session

    session = start_session  # ``with tracker.session(user_id) as s:`` reads better

    # --- everything else ----------------------------------------------------------------------

    def emit(
        self,
        model: type[events.DomainEvent],
        *,
        user_id: str | int | None = None,
        session: LearningSession | None = None,
        **fields: Any,
    ) -> events.DomainEvent | None:
        """Validate and record one event; returns it, or ``None`` when dropped in lenient mode."""
        try:
            event = model(**fields)
        except ValidationError as exc:
            rejected = EventRejected(model.event_type, exc)
            if not self.lenient:
                raise rejected from None
            self.dropped_events += 1
            _log.warning("dropped %s", rejected)
            return None
        attributes = event.attributes()
        user_hash = session.user_hash if session is not None else self.user_hash(user_id)
        if user_hash is not None:
            attributes[semconv.USER_HASH] = user_hash
        name = semconv.event_name(model.event_type)
        if session is not None and session.span.is_recording():
            session.span.add_event(name, attributes)
            return event
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event(name, attributes)
        else:
            with self._tracer.start_as_current_span(semconv.STANDALONE_EVENT_SPAN) as span:
                span.add_event(name, attributes)
        return event

    def material_view(
        self,
        user_id: str | int,
        material_id: str,
        material_type: str,
        *,
        session: LearningSession | None = None,
    ) -> events.DomainEvent | None:
        return self.emit(
            events.MaterialView,
            user_id=user_id,
            session=session,
            material_id=material_id,
            material_type=material_type,
            session_id=session.session_id if session else None,
        )

    def material_complete(
        self,
        user_id: str | int,
        material_id: str,
        material_type: str,
        *,
        time_spent_s: float | None = None,
        score: float | None = None,
        session: LearningSession | None = None,
    ) -> events.DomainEvent | None:
        return self.emit(
            events.MaterialComplete,
            user_id=user_id,
            session=session,
            material_id=material_id,
            material_type=material_type,
            time_spent_s=time_spent_s,
            score=score,
            session_id=session.session_id if session else None,
        )

    def xp_awarded(
        self, user_id: str | int, amount: int, reason: str, *, session: LearningSession | None = None
    ) -> events.DomainEvent | None:
        return self.emit(
            events.XpAwarded,
            user_id=user_id,
            session=session,
            xp_amount=amount,
            xp_reason=reason,
            session_id=session.session_id if session else None,
        )
