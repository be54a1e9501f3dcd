"""Logging of the services: plain text for people, JSON lines for machines.

``STUDYIN_ANALYTICS_LOG_FORMAT=json`` makes every record one JSON object with a
correlation id (the batch or request being handled, from :data:`correlation_id`). Records
carry messages written by this code base, which never logs user values; as a second line
of defence, e-mail-like strings are scrubbed from every message.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
"""Set this around a unit of work (a batch, a request) to tag its log records."""

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def _scrub(text: str) -> str:
    return _EMAIL.sub("[email]", text) if "@" in text else text


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
