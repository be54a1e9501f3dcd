"""Whether the aggregator's servers answer: one log line per change.

During an outage every retry used to log a line (and asyncpg's pool a traceback per attempt to
restore its connection floor: "Failed to restore the pool connection floor"). Here a server's
state is kept as *available* or *unavailable*; a change is logged once (WARNING when it goes,
INFO with the outage's length when it is back), retries are logged at DEBUG only, and the
pool's floor warnings are turned into the same state change (:class:`PoolFloorFilter`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

_log = logging.getLogger(__name__)

REDIS = "Redis"
POSTGRES = "PostgreSQL"


def server_of(url: str) -> str:
    """``host:port`` of a URL: what a log line names (no user, password or options)."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port}" if parts.port else parts.hostname or "?"


def describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


class ServiceStates:
    """Available or not, per server; a change is logged once.

    A server starts *unknown* (nothing is logged when it turns out available). ``since`` is when
    it became unavailable (monotonic), for the length of the outage logged when it is back.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._up: dict[str, bool] = {}
        self._since: dict[str, float] = {}
        self._log = logger or _log

    def is_up(self, service: str) -> bool:
        return self._up.get(service, False)

    def set(self, service: str, up: bool, reason: str | None = None) -> None:
        before = self._up.get(service)
        if before is up:
            return
        self._up[service] = up
        if not up:
            self._since[service] = time.monotonic()
            self._log.warning(
                "%s unavailable (%s): reconnecting with backoff, entries wait on the bus",
                service,
                reason or "no reason given",
            )
        elif before is False:
            down_s = time.monotonic() - self._since.pop(service, time.monotonic())
            self._log.info("%s available again after %.1f s", service, down_s)


class PoolFloorFilter(logging.Filter):
    """On the ``asyncpg.pool`` logger: a failed attempt to restore the pool's connection floor
    (a WARNING with a traceback, repeated with backoff while PostgreSQL is away) becomes a
    state change of ``service`` in ``states`` and is not logged itself."""

    MESSAGE = "Failed to restore the pool connection floor"

    def __init__(self, states: ServiceStates, service: str = POSTGRES) -> None:
        super().__init__()
        self.states = states
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        self.states.set(self.service, False, describe(exc) if exc is not None else "pool floor not restored")
        return False


def install_pool_floor_filter(states: ServiceStates) -> Callable[[], None]:
    """Attach a :class:`PoolFloorFilter` to asyncpg's pool logger; returns what removes it."""
    pool_logger = logging.getLogger("asyncpg.pool")
    floor = PoolFloorFilter(states)
    pool_logger.addFilter(floor)
    return lambda: pool_logger.removeFilter(floor)
