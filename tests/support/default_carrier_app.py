"""An app that builds its tracker with no carrier, for tests/instrumentation/test_default_carrier.py; run as
``opentelemetry-instrument python -m tests.support.default_carrier_app``. It starts a learning session
outside any request (the session span stays open), records one event on it, prints the class of the
carrier its tracker chose, then waits to be killed: nothing is flushed at exit, so whatever reaches the
bus left while the session was open."""

from __future__ import annotations

import time

from studyin_analytics.instrumentation import StudyInTracker

USER = "default-carrier-learner"
MATERIAL = "cardio-101"
WAIT_S = 120.0


def main() -> None:
    tracker = StudyInTracker()  # no carrier, no providers: the zero-code set-up's global ones
    session = tracker.start_session(USER)
    tracker.material_view(USER, MATERIAL, "video", session=session)
    print(type(tracker.carrier).__name__, flush=True)
    time.sleep(WAIT_S)  # until SIGKILL


if __name__ == "__main__":
    main()
