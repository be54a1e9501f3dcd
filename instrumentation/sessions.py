"""Learning sessions held in one process: :class:`LearningSession` (one span, ended once), the
:class:`SessionTicket` a stateless app keeps between ``begin_session`` and ``end_session``, and the
session current in a ``with tracker.session(...)`` block (:func:`current_session`)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry.trace import Span

from . import events
from .carriers import SESSION_SPAN_EVENT_CAP
from .clock import datetime_of, stamp

if TYPE_CHECKING:
    from .tracker import StudyInTracker

__all__ = ["LearningSession", "SessionTicket", "current_session"]

_current_session: ContextVar[LearningSession | None] = ContextVar("studyin_learning_session", default=None)


@dataclass(frozen=True)
class SessionTicket:
    """What a stateless app keeps between ``begin_session`` and ``end_session`` (no user data)."""

    session_id: uuid.UUID
    started_at: datetime


class LearningSession:
    """A running learning session (one span); ends once, through :meth:`end` or its ``with`` block.

    Inside ``with tracker.session(...)`` (or ``async with``) the session is current: events
    emitted without ``session=`` in that context attach to it. Material and XP events emitted
    on the session are tallied, so :meth:`end` knows the XP earned and materials touched.
    """

    __slots__ = (
        "_clock",
        "_cv_token",
        "_ended",
        "_events_on_span",
        "_last_activity",
        "_lock",
        "_materials",
        "_started",
        "_tracker",
        "_xp",
        "lrs_hash",
        "session_id",
        "span",
        "started_at",
        "user_hash",
    )

    def __init__(
        self,
        tracker: StudyInTracker,
        span: Span,
        session_id: uuid.UUID,
        user_hash: str,
        lrs_hash: str | None = None,
    ):
        self._tracker = tracker
        self.span = span
        self.session_id = session_id
        self.user_hash = user_hash
        self.lrs_hash = lrs_hash
        self._clock = tracker.clock
        self.started_at = datetime_of(self._clock)
        self._started = self._last_activity = self._clock.monotonic()
        self._ended = False
        self._xp = 0
        self._materials: dict[str, None] = {}
        self._lock = threading.Lock()
        self._events_on_span = 2  # room kept for session_start and session_end
        self._cv_token: Token[LearningSession | None] | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def ticket(self) -> SessionTicket:
        return SessionTicket(self.session_id, self.started_at)

    @property
    def xp_earned(self) -> int:
        return self._xp

    @property
    def materials_touched(self) -> tuple[str, ...]:
        return tuple(self._materials)

    def elapsed_s(self) -> float:
        return self._clock.monotonic() - self._started

    def idle_s(self) -> float:
        """Seconds since the last event of this session."""
        return self._clock.monotonic() - self._last_activity

    def _claim_event_slot(self) -> bool:
        with self._lock:
            if self._events_on_span >= SESSION_SPAN_EVENT_CAP:
                return False
            self._events_on_span += 1
            return True

    def _tally(self, event: events.DomainEvent) -> None:
        with self._lock:
            self._last_activity = self._clock.monotonic()
            material_id = getattr(event, "material_id", None)
            if material_id is not None and len(self._materials) < 200:
                self._materials[material_id] = None
            if isinstance(event, events.XpAwarded):
                self._xp += event.xp_amount

    def end(
        self,
        *,
        xp_earned: int | None = None,
        materials_touched: Iterable[str] | None = None,
        end_reason: events.SessionEndReason | str = events.SessionEndReason.COMPLETED,
    ) -> events.DomainEvent | None:
        """Record ``session_end`` and end the span (later calls do nothing).

        ``xp_earned`` and ``materials_touched`` default to what was emitted on this session. For
        ``end_reason="timeout"`` the duration runs to the last activity, not to now.
        """
        with self._lock:
            if self._ended:
                return None
            self._ended = True
        reason = events.SessionEndReason(end_reason) if isinstance(end_reason, str) else end_reason
        until = self._last_activity if reason is events.SessionEndReason.TIMEOUT else self._clock.monotonic()
        try:
            return self._tracker.emit(
                events.SessionEnd,
                session=self,
                session_id=self.session_id,
                duration_s=max(until - self._started, 0.0),
                xp_earned=self._xp if xp_earned is None else xp_earned,
                materials_touched=tuple(self._materials if materials_touched is None else materials_touched),
                end_reason=reason,
            )
        finally:
            self.span.end(end_time=stamp(self._clock))
            self._tracker._closed(self)

    def abandon(self) -> events.DomainEvent | None:
        """The student left before finishing (e.g. closed the material)."""
        return self.end(end_reason=events.SessionEndReason.ABANDONED)

    def timeout(self) -> events.DomainEvent | None:
        """The session went idle; its duration runs to the last activity."""
        return self.end(end_reason=events.SessionEndReason.TIMEOUT)

    def __enter__(self) -> LearningSession:
        # Only the *session* becomes current (events pick it up); the OTel context is left
        # alone, so spans created inside keep their request as parent.
        self._cv_token = _current_session.set(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._ended:
                self.end(
                    end_reason=events.SessionEndReason.ABANDONED
                    if exc_type
                    else events.SessionEndReason.COMPLETED
                )
        finally:
            if self._cv_token is not None:
                _current_session.reset(self._cv_token)
                self._cv_token = None

    async def __aenter__(self) -> LearningSession:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def current_session() -> LearningSession | None:
    """The session of the enclosing ``with tracker.session(...)`` block, if any."""
    session = _current_session.get()
    return None if session is None or session.ended else session
