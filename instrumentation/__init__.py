"""StudyIn instrumentation for OpenTelemetry.

* :class:`StudyInTracker`: domain events (sessions, materials, gamification, AI coach, system
  metrics), validated by the models in :mod:`.events`, carried as span events or log records
  (:mod:`.carriers`).
* :func:`instrument_app` and :class:`StudyInInstrumentor` (entry point ``studyin``): ASGI
  auto-instrumentation with user pseudonymization, explicit or zero-code; :func:`set_user`
  attributes the request being served from the app's own auth code; :class:`.distro.StudyInDistro`
  (entry points ``studyin`` of ``opentelemetry_distro`` and ``opentelemetry_configurator``)
  gives ``opentelemetry-instrument`` this project's defaults.
* :class:`Pseudonymizer`, :class:`PrivacyGuard` and :class:`GuardedSpanExporter`
  (:mod:`.privacy`): what may leave a process.
"""

from .asgi import StudyInASGIMiddleware, instrument_app
from .attribution import set_user
from .carriers import LogRecordCarrier
from .instrumentor import StudyInInstrumentor
from .privacy import GuardedSpanExporter, PrivacyGuard, Pseudonymizer
from .settings import Settings, get_settings
from .tracker import (
    EventRejected,
    LearningSession,
    SessionTicket,
    SpanEventCarrier,
    StudyInTracker,
    current_session,
)
from .version import __version__

__all__ = [
    "EventRejected",
    "GuardedSpanExporter",
    "LearningSession",
    "LogRecordCarrier",
    "PrivacyGuard",
    "Pseudonymizer",
    "SessionTicket",
    "Settings",
    "SpanEventCarrier",
    "StudyInASGIMiddleware",
    "StudyInInstrumentor",
    "StudyInTracker",
    "__version__",
    "current_session",
    "get_settings",
    "instrument_app",
    "set_user",
]
