"""Learning sessions held in one process: :class:`LearningSession` (one span, ended once), the
:class:`SessionTicket` a stateless app keeps between ``begin_session`` and ``end_session``, and the
session current in a ``with tracker.session(...)`` block (:func:`current_session`)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry.trace import Span

from . import events, semconv
from .carriers import SESSION_SPAN_EVENT_CAP
from .clock import SYSTEM_CLOCK
from .span_events import KnownClean

if TYPE_CHECKING:
    from .tracker import StudyInTracker

__all__ = ["LearningSession", "SessionTicket", "current_session", "new_session_id"]

_current_session: ContextVar[LearningSession | None] = ContextVar("studyin_learning_session", default=None)

_SESSION_START = semconv.event_name(events.SessionStart.event_type)
_SESSION_END = semconv.event_name(events.SessionEnd.event_type)
_SESSION_ID = semconv.FIELD_ATTRIBUTES["session_id"]
_END_ATTRIBUTES = tuple(
    semconv.FIELD_ATTRIBUTES[name]
    for name in ("duration_s", "xp_earned", "materials_touched", "end_reason")  # SessionEnd's order
)
_START_VERSION, _END_VERSION = events.SessionStart.version, events.SessionEnd.version
_USER, _LRS_USER = semconv.USER_HASH, semconv.USER_LRS_HASH
_REASON = events.SessionEndReason
_COMPLETED, _ABANDONED, _TIMEOUT = _REASON.COMPLETED, _REASON.ABANDONED, _REASON.TIMEOUT
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_XP_EARNED = 10_000_000
"""``SessionEnd.xp_earned``'s bound (``events.Count``): above it, the event is validated (and refused)."""


_V4_MASK = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)  # what UUID(int=..., version=4) clears
_V4_BITS = (0x8000 << 48) | (4 << 76)  # and sets: the RFC 4122 variant, version 4
_new_object = object.__new__
_set_slot = object.__setattr__


def new_session_id() -> uuid.UUID:
    """A random (version 4) UUID drawn as the SDK draws trace ids (``random``, reseeded after a fork):
    ``uuid4()`` makes a system call per session; a session id must be unique, not secret. Built as
    ``UUID(int=random.getrandbits(128), version=4)`` builds it, without its argument checks (a third of
    its cost; a test holds the two equal)."""
    session_id = _new_object(uuid.UUID)
    _set_slot(session_id, "int", (random.getrandbits(128) & _V4_MASK) | _V4_BITS)
    _set_slot(session_id, "is_safe", uuid.SafeUUID.unknown)
    return session_id


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
        "_monotonic",
        "_plain",
        "_started",
        "_started_ns",
        "_system",
        "_tracker",
        "_xp",
        "key",
        "lrs_hash",
        "session_id",
        "span",
        "user_hash",
    )

    def __init__(
        self,
        tracker: StudyInTracker,
        span: Span,
        session_id: uuid.UUID,
        user_hash: str,
        lrs_hash: str | None = None,
        *,
        session_key: str | None = None,
    ):
        self._tracker = tracker
        self.span = span
        self.session_id = session_id
        self.user_hash = user_hash
        self.lrs_hash = lrs_hash
        self._clock = clock = tracker.clock
        self._system = system = clock is SYSTEM_CLOCK  # then the time module's own functions (no frame)
        self._monotonic = time.monotonic if system else clock.monotonic
        self._started_ns = time.time_ns() if system else clock.time_ns()  # started_at, made when asked for
        self.key = session_key or str(session_id)
        """The session id as ``studyin.session.id`` carries it (and the tracker's open sessions are keyed)."""
        # what the lifecycle events' fast paths need: nothing of the caller's left unvalidated
        self._plain = isinstance(session_id, uuid.UUID) and bool(user_hash)
        self._started = self._last_activity = self._monotonic()
        self._ended = False
        self._xp = 0
        self._materials: dict[str, None] = {}
        self._lock = threading.Lock()
        self._events_on_span = 2  # room kept for session_start and session_end
        self._cv_token: Token[LearningSession | None] | None = None

    @classmethod
    def start(
        cls, tracker: StudyInTracker, session_id: uuid.UUID, user_hash: str | None, lrs_hash: str | None
    ) -> LearningSession:
        """A session on a new span (``tracker.start_session``, once the user is pseudonymized)."""
        key = str(session_id)
        attributes = (
            {_SESSION_ID: key} if user_hash is None else {_SESSION_ID: key, semconv.USER_HASH: user_hash}
        )
        span = tracker.carrier.start_session_span(attributes)
        return cls(tracker, span, session_id, user_hash or "", lrs_hash, session_key=key)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def started_at(self) -> datetime:
        """When the session started, by the tracker's clock (UTC, microsecond precision)."""
        return _EPOCH + timedelta(microseconds=self._started_ns // 1000)

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
        return self._monotonic() - self._started

    def idle_s(self) -> float:
        """Seconds since the last event of this session."""
        return self._monotonic() - self._last_activity

    def _claim_event_slot(self) -> bool:
        with self._lock:
            if self._events_on_span >= SESSION_SPAN_EVENT_CAP:
                return False
            self._events_on_span += 1
            return True

    def _tally(self, event: events.DomainEvent) -> None:
        with self._lock:
            self._last_activity = self._monotonic()
            material_id = getattr(event, "material_id", None)
            if material_id is not None and len(self._materials) < 200:
                self._materials[material_id] = None
            if isinstance(event, events.XpAwarded):
                self._xp += event.xp_amount

    def record_start(self, material_id: str | None = None) -> None:
        """Record ``session_start``. Without a material id nothing here came from the caller
        unchecked (the id is a UUID, the user already pseudonymized), so the event is built
        without the model's validation: the hot path of ``tracker.session()``."""
        if material_id is None and self._plain:
            self._last_activity = self._monotonic()
            attributes = KnownClean(
                {semconv.EVENT_VERSION: _START_VERSION, _SESSION_ID: self.key, _USER: self.user_hash}
            )
            if self.lrs_hash is not None:
                attributes[_LRS_USER] = self.lrs_hash
            self._tracker.carrier.record(_SESSION_START, attributes, self, lifecycle=False)
            return
        self._tracker.emit(
            events.SessionStart, session=self, session_id=self.session_id, material_id=material_id
        )

    def _record_end(
        self, duration_s: float, reason: events.SessionEndReason, *, build_event: bool
    ) -> events.DomainEvent | None:
        """``session_end`` as ``SessionEnd(...).attributes()`` gives it (then the user's pseudonyms, as
        ``tracker.emit`` adds them), without validating again; the event object is built only for a caller
        that gets it back (:meth:`end`, not ``with``)."""
        duration, xp, materials, end_reason = _END_ATTRIBUTES
        attributes = KnownClean(  # values of the tally (validated events): the SDK need not check them again
            {
                semconv.EVENT_VERSION: _END_VERSION,
                _SESSION_ID: self.key,
                duration: duration_s,
                xp: self._xp,
                materials: tuple(self._materials),  # as the SDK keeps a list
                end_reason: reason._value_,  # .value is a Python property
                _USER: self.user_hash,
            }
        )
        if self.lrs_hash is not None:
            attributes[_LRS_USER] = self.lrs_hash
        self._tracker.carrier.record(_SESSION_END, attributes, self, lifecycle=True)
        if not build_event:
            return None
        return events.SessionEnd.model_construct(
            session_id=self.session_id,
            duration_s=duration_s,
            xp_earned=self._xp,
            materials_touched=tuple(self._materials),
            end_reason=reason,
        )

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
        return self._end(xp_earned, materials_touched, end_reason, build_event=True)

    def _end(
        self,
        xp_earned: int | None,
        materials_touched: Iterable[str] | None,
        end_reason: events.SessionEndReason | str,
        *,
        build_event: bool,
    ) -> events.DomainEvent | None:
        with self._lock:
            if self._ended:
                return None
            self._ended = True
        reason = (
            end_reason
            if type(end_reason) is _REASON or not isinstance(end_reason, str)
            else _REASON(end_reason)
        )
        until = self._last_activity if reason is _TIMEOUT else self._monotonic()
        duration_s = max(until - self._started, 0.0)
        try:
            if (  # session_end from this session's tally (validated events) is valid as it is
                xp_earned is None
                and materials_touched is None
                and self._plain
                and type(reason) is _REASON
                and isinstance(duration_s, float)
                and duration_s <= events.MAX_SECONDS
                and self._xp <= MAX_XP_EARNED
            ):
                return self._record_end(duration_s, reason, build_event=build_event)
            return self._tracker.emit(
                events.SessionEnd,
                session=self,
                session_id=self.session_id,
                duration_s=duration_s,
                xp_earned=self._xp if xp_earned is None else xp_earned,
                materials_touched=tuple(self._materials if materials_touched is None else materials_touched),
                end_reason=reason,
            )
        finally:
            self.span.end(end_time=None if self._system else self._clock.time_ns())  # clock.stamp's
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
            if not self._ended:  # the with statement drops the event: none is built
                reason = _ABANDONED if exc_type else _COMPLETED
                self._end(None, None, reason, build_event=False)
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
