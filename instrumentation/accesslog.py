"""Keeps the ASGI server's access log free of identity.

uvicorn logs one line per request on the ``uvicorn.access`` logger, ``'%s - "%s %s HTTP/%s" %d'``
with the client address (``ip:port``), the method, the path *with its query string*, the HTTP
version and the status. That log is the app's, not this project's, but it holds what the privacy
rules keep out of telemetry: client addresses, query strings (``?email=...``), ids and e-mail
addresses in paths. :class:`AccessLogFilter` rewrites each record before any handler formats it:

* the client address becomes ``-``;
* ``route`` mode (the default): the path becomes the request's route template
  (``/users/{user_id}/profile``), read from the server span StudyIn's ASGI middleware keeps
  current while the app runs and names before the response starts. A request without one (no
  route matched, a metrics-only or excluded path, a span not sampled, an app not instrumented)
  is logged with the path ``-``;
* ``path`` mode: the path stays, cut at ``?`` and ``#``, with e-mail addresses scrubbed
  (internationalized and percent-encoded ones too). Ids in path segments stay: use it only
  where the logs are protected like the data;
* the method, the HTTP version and the status stay.

A record of another layout (a future uvicorn, or a line an app logs on that logger) is frozen
into its message with addresses, query strings and IP addresses removed.

:func:`install_access_log_filter` puts the filter on the logger (mode from
``STUDYIN_ANALYTICS_ACCESS_LOG``: ``route``, ``path`` or ``off``); it is idempotent. A logger
filter runs before the record reaches any handler, the app's own and propagated ones included,
and survives uvicorn's ``dictConfig`` (which replaces handlers, not filters). In a logging
config: ``"filters": {"studyin": {"()": "studyin_analytics.instrumentation.accesslog.AccessLogFilter"}}``
on the ``uvicorn.access`` logger.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Literal, get_args

from opentelemetry import trace

from . import semconv
from .emails import scrub_emails
from .privacy import strip_query
from .settings import Settings, load_settings

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "-"
AccessLogMode = Literal["route", "path", "off"]
ACCESS_LOG_MODES: tuple[str, ...] = get_args(AccessLogMode)

_QUERY = re.compile(r"\?[^\s\"]*")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")
_IPV6 = re.compile(r"\[?[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*\]?(?::\d{1,5})?")


def _no_ipv6(match: re.Match[str]) -> str:
    text = match.group()
    host = text[1 : text.index("]")] if text.startswith("[") and "]" in text else text
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return text  # a time of day, a port list...: not an address
    return REDACTED


def scrub_line(text: str) -> str:
    """An access-log line of unknown layout without query strings, addresses or IPs."""
    text = _QUERY.sub("", scrub_emails(text))
    return _IPV6.sub(_no_ipv6, _IPV4.sub(REDACTED, text))


def current_route() -> str | None:
    """The route template of the server span current in this context, if it has one."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    attributes = getattr(span, "attributes", None)
    route = attributes.get(semconv.HTTP_ROUTE) if attributes else None
    return scrub_emails(strip_query(route)) if isinstance(route, str) and route else None


class AccessLogFilter(logging.Filter):
    """Rewrites uvicorn access records: no client address, a route template or a cleaned path."""

    def __init__(self, mode: Literal["route", "path"] = "route") -> None:
        super().__init__()
        if mode not in ("route", "path"):
            raise ValueError(f"access log mode must be 'route' or 'path', not {mode!r}")
        self.mode = mode

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            _client, method, path, version, status = args
            record.args = (REDACTED, method, self._path(path), version, status)
        else:
            record.msg = scrub_line(record.getMessage())
            record.args = None
        return True

    def _path(self, path: object) -> str:
        if self.mode == "route":
            return current_route() or REDACTED
        return scrub_emails(strip_query(str(path)))


def install_access_log_filter(
    mode: AccessLogMode | None = None, *, settings: Settings | None = None, logger: str = ACCESS_LOGGER
) -> AccessLogFilter | None:
    """Install the filter on ``logger`` (``uvicorn.access``), or with ``off`` remove it.

    ``mode`` defaults to ``STUDYIN_ANALYTICS_ACCESS_LOG`` (from ``settings``, else the
    environment). Calling it again changes the mode of the installed filter; there is never more
    than one. Returns the filter (``None`` when off).
    """
    if mode is None:
        mode = (settings if settings is not None else load_settings()).access_log
    target = logging.getLogger(logger)
    for existing in [f for f in target.filters if isinstance(f, AccessLogFilter)]:
        target.removeFilter(existing)
    if mode == "off":
        return None
    installed = AccessLogFilter(mode)
    target.addFilter(installed)
    return installed
