"""The same workload on the other carrier: its session events as log-record events (wire version 2
log rows), as the tracker's :class:`~studyin_analytics.instrumentation.LogRecordCarrier` sends them,
and entries of wire version 1 (a writer before the upgrade). The events, hence the truth, are unchanged."""

from __future__ import annotations

import os
import random
from typing import Any

import msgpack

from studyin_analytics.exporter import wire
from studyin_analytics.exporter.wire import SpanRecord

from .build import Workload

_SESSION = "studyin.learning_session"


def _as_logs(span: SpanRecord) -> list[SpanRecord]:
    """A session span as the log carrier sends it: ``session_end`` on the span, every other event a
    log record correlated to it, with the learner on each (as the tracker puts it on every event)."""
    ending = [e for e in span.events if e.name == "studyin.session_end"]
    user = {"user.hash": span.attributes["user.hash"]}
    logs = [
        wire.log_record(
            os.urandom(16),
            span.trace_id,
            span.span_id,
            e.name,
            e.time_unix_nano,
            {**user, **e.attributes},
            span.resource,
        )
        for e in span.events
        if e.name != "studyin.session_end"
    ]
    return [span._replace(events=ending), *logs]


def with_log_carrier(wl: Workload, share: float = 1.0, seed: int = 5, per_entry: int = 40) -> Workload:
    """``wl`` with ``share`` of its sessions' events carried as log records (the rest as span events),
    shuffled over entries of both kinds."""
    rng = random.Random(seed)
    records: list[SpanRecord] = []
    for entry in wl.entries:
        for span in wire.decode_entry(_read(entry)):
            converted = span.name == _SESSION and rng.random() < share
            records.extend(_as_logs(span) if converted else [span])
    rng.shuffle(records)
    entries = [
        wire.entry_fields(wire.encode_records(records[i : i + per_entry]), len(records[i : i + per_entry]))
        for i in range(0, len(records), per_entry)
    ]
    return Workload(entries, list(wl.events), dict(wl.sessions))


def as_version_1(fields: dict[Any, Any]) -> dict[Any, Any]:
    """A span-only entry as a writer of wire version 1 wrote it."""
    resources, spans, logs = msgpack.unpackb(fields[wire.FIELD_DATA], raw=False)
    assert not logs, "version 1 carries no log events"
    blob = msgpack.packb([resources, spans], use_bin_type=True)
    return {**fields, wire.FIELD_VERSION: wire.WIRE_VERSION_1, wire.FIELD_DATA: blob}


def _read(fields: dict[Any, Any]) -> dict[bytes, bytes]:
    return {
        (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in fields.items()
    }
