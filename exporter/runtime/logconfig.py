"""Logging of the services: plain text for people, JSON lines for machines.

``STUDYIN_ANALYTICS_LOG_FORMAT=json`` makes every record one JSON object with a
correlation id (the batch or request being handled, from :data:`correlation_id`). Records
carry messages written by this code base, which never logs user values; as a second line
of defence, e-mail-like strings are scrubbed from every message.

Setting the id (defined in :mod:`studyin_analytics.exporter.runtime.correlation`, which the gateway
shares; re-exported here):

* around a unit of work, ``with correlated(cid):`` (or ``with correlated() as cid:`` for a new
  one from :func:`new_correlation_id`), e.g. ``correlated(f"batch-{first_entry_id}")``;
* around each HTTP request, ``correlation.install(app)`` (the gateway and the query API do).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from ...instrumentation.emails import scrub_emails
from .correlation import correlated, correlation_id, new_correlation_id

_scrub = scrub_emails  # the privacy rules' scrubber: internationalized and percent-encoded addresses too


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, correlation id, exception type."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _scrub(record.getMessage()),
        }
        cid = correlation_id.get()
        if cid is not None:
            entry["correlation_id"] = cid
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception messages and tracebacks can quote data.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = _scrub(super().format(record))
        cid = correlation_id.get()
        return f"{text} [{cid}]" if cid else text


def configure_logging(fmt: Literal["text", "json"] = "text", level: int = logging.INFO) -> None:
    """Route the root logger to stderr in ``fmt`` (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL (with its query string) at INFO: never useful here, never safe.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "correlated",
    "correlation_id",
    "new_correlation_id",
]
