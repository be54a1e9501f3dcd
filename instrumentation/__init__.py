"""StudyIn instrumentation for OpenTelemetry.

* :class:`StudyInTracker`: domain events (sessions, materials, gamification, AI coach) as
  span events, validated by the models in :mod:`.events`.
* :func:`instrument_app`: ASGI auto-instrumentation with user pseudonymization.
* :class:`Pseudonymizer` and :class:`PrivacyGuard` (:mod:`.privacy`): what may leave a process.
"""

from .asgi import instrument_app
from .privacy import PrivacyGuard, Pseudonymizer
from .settings import Settings, get_settings
from .tracker import EventRejected, LearningSession, StudyInTracker
from .version import __version__

__all__ = [
    "EventRejected",
    "LearningSession",
    "PrivacyGuard",
    "Pseudonymizer",
    "Settings",
    "StudyInTracker",
    "__version__",
    "get_settings",
    "instrument_app",
]
