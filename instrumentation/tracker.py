"""The tracker API: how app code reports StudyIn domain events.

Events are validated by their pydantic model (:mod:`.events`), then handed to a carrier
(:mod:`.carriers`). Without ``carrier=``, :func:`.carriers.default_carrier` chooses: the
:class:`LogRecordCarrier` (span events on a short HTTP request span, log records wherever an
event would wait) when a global SDK LoggerProvider exports log records, else the
:class:`SpanEventCarrier` (span events only), with a warning. The event model knows neither.

The user id is pseudonymized here, before anything is recorded. Nothing in this module does
I/O: exporting happens later, off the hot path, in the span processor's worker. Every method is a
plain, non-blocking call, so sync and async code use the same API (sessions are async too).

Two ways to run a learning session:

* in one process: ``with tracker.session(user_id) as s:`` or ``s = tracker.start_session(...)``
  then ``s.end()``; the session is one span, its duration the session's;
* stateless (multi-worker web apps, where start and end arrive in different requests or
  processes): ``ticket = tracker.begin_session(user_id)`` records ``session_start`` and returns a
  :class:`SessionTicket` (session id + start time) for the app to keep, and
  ``tracker.end_session(user_id, ticket.session_id, started_at=ticket.started_at)`` later records
  the session span from the known start time to now, with ``session_end``. No state is held
  between the two calls.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from pydantic import ValidationError

from . import events, semconv
from .carriers import SESSION_SPAN_EVENT_CAP, EventCarrier, SpanEventCarrier, default_carrier
from .clock import SYSTEM_CLOCK, Clock, datetime_of, stamp
from .custom_tracking import CustomEventsMixin
from .experiments import ExperimentExposures
from .privacy import Pseudonymizer
from .sessions import LearningSession, SessionTicket, current_session, new_session_id
from .settings import get_settings
from .version import __version__

_log = logging.getLogger(__name__)

__all__ = [  # carriers and sessions live in .carriers and .sessions; imported from here as before
    "SESSION_SPAN_EVENT_CAP",
    "EventCarrier",
    "EventRejected",
    "LearningSession",
    "SessionTicket",
    "SpanEventCarrier",
    "StudyInTracker",
    "UserId",
    "current_session",
]

UserId = str | int
_LOGGED_DROPS_PER_TYPE = 10  # then one log line per 1000 drops of that type


class EventRejected(ValueError):
    """An event failed validation; the message names each field and the reason (never values)."""

    def __init__(self, event_type: str, error: ValidationError | str) -> None:
        if isinstance(error, ValidationError):
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or '<event>'}: {item['msg']}"
                for item in error.errors(include_input=False, include_url=False, include_context=False)
            )
        else:
            reasons = error
        super().__init__(f"invalid {event_type} event: {reasons}")
        self.event_type = event_type
        self.reasons = reasons


# --- the tracker ---------------------------------------------------------------------------


class StudyInTracker(CustomEventsMixin, ExperimentExposures):  # .custom() and .variant(): own modules
    """Emits StudyIn domain events.

    ``lenient=True`` is for production: an invalid event is counted in :attr:`dropped_events`
    (and per type in :attr:`dropped_by_type`) and logged with its type, field names and reasons,
    never its values, instead of raising :class:`EventRejected`.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        pseudonymizer: Pseudonymizer | None = None,
        lenient: bool = False,
        carrier: EventCarrier | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(semconv.SCOPE_NAME, __version__, tracer_provider=tracer_provider)
        self.carrier: EventCarrier = carrier or default_carrier(self._tracer, clock)
        self.clock: Clock = clock or SYSTEM_CLOCK  # event and session times (a simulation's, or the system's)
        self._pseudonymizer = pseudonymizer
        self.lenient = lenient
        self.dropped_by_type: Counter[str] = Counter()
        self._drop_lock = threading.Lock()
        self._open: dict[str, LearningSession] = {}  # by session.key (a UUID's hash is Python code)
        self._open_lock = threading.Lock()

    @property
    def dropped_events(self) -> int:
        return sum(self.dropped_by_type.values())

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        if self._pseudonymizer is None:
            self._pseudonymizer = Pseudonymizer.from_settings(get_settings())
        return self._pseudonymizer

    def user_hash(self, user_id: UserId | None) -> str | None:
        if type(user_id) is str and user_id:  # the common case first: one type test, the cached pseudonym
            return (self._pseudonymizer or self.pseudonymizer).pseudonymize(user_id)
        if user_id is None:
            return None
        if isinstance(user_id, bool) or not isinstance(user_id, str | int) or user_id == "":
            raise TypeError("user_id must be a non-empty str or an int")
        return self.pseudonymizer.pseudonymize(str(user_id))

    def lrs_hash(self, user_id: UserId | None) -> str | None:
        """``user.lrs_hash`` of a user id :meth:`user_hash` accepted (``None`` without an LRS key)."""
        lrs = None if user_id is None else (self._pseudonymizer or self.pseudonymizer).lrs
        return None if lrs is None else lrs.pseudonymize(str(user_id))

    # --- the one validation + recording path ------------------------------------------------

    def _reject(self, rejected: EventRejected) -> None:
        if not self.lenient:
            raise rejected
        with self._drop_lock:
            self.dropped_by_type[rejected.event_type] += 1
            count = self.dropped_by_type[rejected.event_type]
        if count <= _LOGGED_DROPS_PER_TYPE or count % 1000 == 0:
            _log.warning(
                "dropped %s (%d %s events dropped so far)", str(rejected), count, rejected.event_type
            )

    def emit(
        self,
        model: type[events.DomainEvent],
        /,
        *,
        user_id: UserId | None = None,
        session: LearningSession | None = None,
        require_user: bool = True,
        **fields: Any,
    ) -> events.DomainEvent | None:
        """Validate and record one event; returns it, or ``None`` when dropped in lenient mode."""
        if session is None:
            session = current_session()
        if session is not None and "session_id" in model.model_fields and fields.get("session_id") is None:
            fields["session_id"] = session.session_id
        # Rejections are raised or logged *after* the except blocks, so no exception context
        # (whose message may quote the value) is chained to them or printed by a failing handler.
        rejected: EventRejected | None = None
        user_hash: str | None = None
        lrs_hash: str | None = None
        try:
            user_hash = self.user_hash(user_id) if user_id is not None else None
            lrs_hash = self.lrs_hash(user_id)
        except TypeError as exc:
            rejected = EventRejected(model.event_type, f"user_id: {exc}")
        if rejected is None and user_hash is None and session is not None:
            user_hash = session.user_hash or None
            lrs_hash = session.lrs_hash
        if rejected is None and user_hash is None and require_user:
            rejected = EventRejected(model.event_type, "user_id: required for this event")
        event: events.DomainEvent | None = None
        if rejected is None:
            try:
                event = model(**fields)
            except ValidationError as exc:
                rejected = EventRejected(model.event_type, exc)
            except TypeError as exc:  # unexpected keyword: a caller bug, name it without values
                rejected = EventRejected(model.event_type, f"<call>: {type(exc).__name__}")
        if rejected is not None or event is None:
            self._reject(rejected or EventRejected(model.event_type, "<event>: invalid"))
            return None
        attributes = event.attributes()
        if user_hash is not None:
            attributes[semconv.USER_HASH] = user_hash
            if lrs_hash is not None:
                attributes[semconv.USER_LRS_HASH] = lrs_hash
            attributes.update(self.pseudonymizer.link(user_id))  # a key rotation's transition only
        if session is not None:
            session._tally(event)
        lifecycle = model is events.SessionEnd
        self.carrier.record(semconv.event_name(model.event_type), attributes, session, lifecycle=lifecycle)
        return event

    # --- sessions ---------------------------------------------------------------------------

    def start_session(
        self,
        user_id: UserId,
        *,
        material_id: str | None = None,
        session_id: uuid.UUID | None = None,
    ) -> LearningSession:
        """Start a learning session (a span); use the result as a context manager or call ``end()``.

        In lenient mode an invalid start still returns a session (so app code need not branch);
        its ``session_start`` is dropped and counted.
        """
        rejected: EventRejected | None = None
        user_hash: str | None = None
        lrs_hash: str | None = None
        try:
            user_hash = self.user_hash(user_id)
            lrs_hash = self.lrs_hash(user_id)
        except TypeError as exc:
            rejected = EventRejected(events.SessionStart.event_type, f"user_id: {exc}")
        if rejected is not None:
            self._reject(rejected)
        session = LearningSession.start(self, session_id or new_session_id(), user_hash, lrs_hash)
        with self._open_lock:
            self._open[session.key] = session
        if user_hash is not None:
            session.record_start(material_id)
        return session

    session = start_session  # ``with tracker.session(user_id) as s:`` reads better

    def _closed(self, session: LearningSession) -> None:
        with self._open_lock:
            self._open.pop(session.key, None)

    def open_session(self, session_id: uuid.UUID | str) -> LearningSession | None:
        """The running in-process session with this id (started by this tracker), if any."""
        try:
            key = str(session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id)))
        except ValueError:
            return None
        with self._open_lock:
            return self._open.get(key)

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    def expire_idle_sessions(self, max_idle_s: float) -> int:
        """End (as ``timeout``) every in-process session idle for more than ``max_idle_s``.

        Call it periodically (e.g. from a background task every minute) when sessions are kept
        in memory across requests: a student who closes the tab never ends the session, and the
        timeout's duration runs to the last activity. Returns how many sessions were ended.
        """
        with self._open_lock:
            idle = [s for s in self._open.values() if s.idle_s() > max_idle_s]
        for session in idle:
            session.timeout()
        return len(idle)

    def begin_session(
        self,
        user_id: UserId,
        *,
        material_id: str | None = None,
        session_id: uuid.UUID | None = None,
    ) -> SessionTicket:
        """Stateless start: record ``session_start`` now, keep nothing; see :meth:`end_session`."""
        ticket = SessionTicket(session_id or uuid.uuid4(), datetime_of(self.clock))
        self.emit(
            events.SessionStart,
            user_id=user_id,
            session_id=ticket.session_id,
            material_id=material_id,
        )
        return ticket

    def end_session(
        self,
        user_id: UserId,
        session_id: uuid.UUID | str,
        *,
        started_at: datetime,
        xp_earned: int = 0,
        materials_touched: Iterable[str] = (),
        end_reason: events.SessionEndReason | str = events.SessionEndReason.COMPLETED,
        last_activity_at: datetime | None = None,
    ) -> events.DomainEvent | None:
        """Stateless end, from any request or process that knows the session id and start time.

        Records a ``studyin.learning_session`` span from ``started_at`` to now carrying
        ``session_end``; the duration runs to ``last_activity_at`` when given (timeouts).
        """
        if started_at.tzinfo is None:
            self._reject(EventRejected(events.SessionEnd.event_type, "started_at: must be timezone-aware"))
            return None
        until = last_activity_at or datetime_of(self.clock)
        duration = (until - started_at).total_seconds()
        rejected: EventRejected | None = None
        event: events.DomainEvent | None = None
        user_hash: str | None = None
        lrs_hash: str | None = None
        try:
            user_hash = self.user_hash(user_id)
            lrs_hash = self.lrs_hash(user_id)
            sid = session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id))
            event = events.SessionEnd(
                session_id=sid,
                duration_s=max(duration, 0.0),  # clocks of two workers may disagree slightly
                xp_earned=xp_earned,
                materials_touched=tuple(materials_touched),
                end_reason=end_reason,  # type: ignore[arg-type]  # validated: str -> enum
            )
        except ValidationError as exc:
            rejected = EventRejected(events.SessionEnd.event_type, exc)
        except (TypeError, ValueError) as exc:
            field = "user_id" if isinstance(exc, TypeError) else "session_id"
            rejected = EventRejected(events.SessionEnd.event_type, f"{field}: {type(exc).__name__}")
        if rejected is not None or event is None or user_hash is None:
            self._reject(rejected or EventRejected(events.SessionEnd.event_type, "user_id: required"))
            return None
        attributes = event.attributes()
        attributes[semconv.USER_HASH] = user_hash
        if lrs_hash is not None:
            attributes[semconv.USER_LRS_HASH] = lrs_hash
        span_attributes = {semconv.FIELD_ATTRIBUTES["session_id"]: str(sid), semconv.USER_HASH: user_hash}
        start_ns = int(started_at.timestamp() * 1e9)
        span = self.carrier.start_session_span(span_attributes, start_time_ns=start_ns)
        span.add_event(semconv.event_name("session_end"), attributes, timestamp=stamp(self.clock))
        span.end(end_time=stamp(self.clock))
        return event

    # --- materials --------------------------------------------------------------------------

    def material_view(
        self,
        user_id: UserId | None,
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

    def material_progress(
        self,
        user_id: UserId | None,
        material_id: str,
        material_type: str,
        progress: float,
        *,
        session: LearningSession | None = None,
    ) -> events.DomainEvent | None:
        """``progress`` is a fraction in [0, 1]."""
        return self.emit(
            events.MaterialProgress,
            user_id=user_id,
            session=session,
            material_id=material_id,
            material_type=material_type,
            progress=progress,
            session_id=session.session_id if session else None,
        )

    def material_complete(
        self,
        user_id: UserId | None,
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

    # --- gamification -----------------------------------------------------------------------

    def xp_awarded(
        self, user_id: UserId | None, amount: int, reason: str, *, session: LearningSession | None = None
    ) -> events.DomainEvent | None:
        return self.emit(
            events.XpAwarded,
            user_id=user_id,
            session=session,
            xp_amount=amount,
            xp_reason=reason,
            session_id=session.session_id if session else None,
        )

    def level_up(self, user_id: UserId, level: int, total_xp: int) -> events.DomainEvent | None:
        return self.emit(events.LevelUp, user_id=user_id, level=level, total_xp=total_xp)

    def achievement_unlocked(self, user_id: UserId, achievement_id: str) -> events.DomainEvent | None:
        return self.emit(events.AchievementUnlocked, user_id=user_id, achievement_id=achievement_id)

    def streak_updated(self, user_id: UserId, streak_days: int) -> events.DomainEvent | None:
        return self.emit(events.StreakUpdated, user_id=user_id, streak_days=streak_days)

    def streak_broken(self, user_id: UserId, previous_streak_days: int) -> events.DomainEvent | None:
        return self.emit(events.StreakBroken, user_id=user_id, previous_streak_days=previous_streak_days)

    # --- AI coach ---------------------------------------------------------------------------

    def ai_coach_interaction(
        self,
        user_id: UserId | None,
        *,
        latency_ms: float,
        tokens_in: int,
        tokens_out: int,
        model: str,
        topic_category: str,
        interaction_id: uuid.UUID | None = None,
        session: LearningSession | None = None,
    ) -> events.DomainEvent | None:
        """One AI-coach exchange, measured (no parameter for the message text); returns the event,
        whose ``interaction_id`` is what :meth:`ai_coach_feedback` refers to."""
        return self.emit(
            events.AiCoachInteraction,
            user_id=user_id,
            session=session,
            interaction_id=interaction_id or uuid.uuid4(),
            latency_ms=latency_ms,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            model=model,
            topic_category=topic_category,
            session_id=session.session_id if session else None,
        )

    def ai_coach_feedback(
        self, user_id: UserId, interaction_id: uuid.UUID | str, rating: int
    ) -> events.DomainEvent | None:
        """The student's 1-5 rating of an AI-coach answer."""
        return self.emit(
            events.AiCoachFeedback, user_id=user_id, interaction_id=interaction_id, rating=rating
        )

    # --- system metrics ---------------------------------------------------------------------

    def system_metric(
        self, name: str, value: float, unit: str = "1", *, user_id: UserId | None = None
    ) -> events.DomainEvent | None:
        """A system measurement; the user is optional (pseudonymized when given)."""
        return self.emit(
            events.SystemMetric,
            user_id=user_id,
            require_user=False,
            metric_name=name,
            metric_value=value,
            metric_unit=unit,
        )

    def api_request(
        self,
        route: str,
        method: str,
        status_code: int,
        duration_ms: float,
        *,
        error_type: str | None = None,
        user_id: UserId | None = None,
    ) -> events.DomainEvent | None:
        """An API request of a server that :func:`instrument_app` does not cover (never both:
        the aggregator already derives one ``api_request`` from every HTTP server span)."""
        return self.emit(
            events.ApiRequest,
            user_id=user_id,
            require_user=False,
            route=route,
            method=method,
            status_code=status_code,
            duration_ms=duration_ms,
            error_type=error_type,
        )
