"""A learner on the Redis bus: found in every stream under the prefix, and rewritten out of it.

Every stream under ``<stream prefix>:`` is searched (the event shards, the aggregator's and the LRS
forwarder's dead letters, anything added later): a wire entry (``v``/``n``/``d``) that carries the
learner is decoded, and re-added **without the learner's spans** (other fields kept) before the
old entry is deleted; an entry that is not a wire entry, or held only the learner, is deleted.
The re-added entry gets a new id at the stream's end, so consumer groups read it again: the
aggregator and the LRS forwarder store and send each event once whatever they read twice (event
and statement ids are deterministic), so that costs nothing but the read. Killed between the
``XADD`` and the ``XDEL``, the next run deletes the old entry: same end state. Strings and hashes
under the prefix are searched too (nothing there should hold a pseudonym).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ...exporter import wire
from ...exporter.connection import AsyncClient
from ...exporter.settings import BusSettings
from ...exporter.tombstone import Tombstone, digest
from .identity import Learner

_PAGE = 500


def _checker(settings: BusSettings, learner: Learner) -> Tombstone:
    checker = Tombstone(settings)
    checker.digests = frozenset(digest(p) for p in learner.pseudonyms)
    return checker


def _mentions(fields: dict[bytes, bytes], needles: list[bytes]) -> bool:
    return any(needle in value for value in fields.values() for needle in needles)


async def _keys(client: AsyncClient, settings: BusSettings, kind: str) -> list[bytes]:
    found: list[bytes] = [
        key async for key in client.scan_iter(match=f"{settings.stream_prefix}:*", count=1000, _type=kind)
    ]
    return sorted(found)


async def _entries(client: AsyncClient, key: bytes) -> AsyncIterator[tuple[bytes, dict[bytes, bytes]]]:
    start = "-"
    while True:
        page: Any = await client.xrange(key, min=start, max="+", count=_PAGE)
        for entry_id, fields in page:
            yield entry_id, fields
        if len(page) < _PAGE:
            return
        start = "(" + page[-1][0].decode()


async def find(client: AsyncClient, settings: BusSettings, learner: Learner) -> dict[str, int]:
    """Entries (streams) and values (strings, hashes) under the prefix that mention ``learner``."""
    needles = [p.encode() for p in learner.pseudonyms]
    out: dict[str, int] = {}
    for key in await _keys(client, settings, "stream"):
        hits = sum([1 async for _, fields in _entries(client, key) if _mentions(fields, needles)])
        if hits:
            out[key.decode()] = hits
    for key in await _keys(client, settings, "hash"):
        values: Any = await client.hgetall(key)
        if any(n in k or n in v for k, v in values.items() for n in needles):
            out[key.decode()] = 1
    for key in await _keys(client, settings, "string"):
        value = await client.get(key)
        if value is not None and any(n in value for n in needles):
            out[key.decode()] = 1
    return out


async def entries_of(
    client: AsyncClient, settings: BusSettings, learner: Learner
) -> AsyncIterator[dict[str, Any]]:
    """The learner's spans still on the bus (access export): stream, entry id, span."""
    needles = [p.encode() for p in learner.pseudonyms]
    checker = _checker(settings, learner)
    for key in await _keys(client, settings, "stream"):
        async for entry_id, fields in _entries(client, key):
            if not _mentions(fields, needles):
                continue
            try:
                records = wire.decode_entry(fields)
            except wire.WireFormatError:
                yield {"stream": key.decode(), "entry": entry_id.decode(), "fields": _plain(fields)}
                continue
            for record in records:
                if checker.record_erased(record):
                    yield {"stream": key.decode(), "entry": entry_id.decode(), "span": _span(record)}


def _plain(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}


def _span(record: wire.SpanRecord) -> dict[str, Any]:
    return {
        "trace_id": record.trace_id.hex(),
        "span_id": record.span_id.hex(),
        "name": record.name,
        "start_unix_nano": record.start_unix_nano,
        "end_unix_nano": record.end_unix_nano,
        "attributes": record.attributes,
        "events": [
            {"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": e.attributes}
            for e in record.events
        ],
    }


async def erase(client: AsyncClient, settings: BusSettings, learner: Learner) -> dict[str, int]:
    """Rewrite every stream entry that mentions ``learner`` without it; returns entries per stream."""
    needles = [p.encode() for p in learner.pseudonyms]
    checker = _checker(settings, learner)
    out: dict[str, int] = {}
    for key in await _keys(client, settings, "stream"):
        hits = [(i, f) async for i, f in _entries(client, key) if _mentions(f, needles)]
        for entry_id, fields in hits:
            kept: list[wire.SpanRecord] = []
            with contextlib.suppress(wire.WireFormatError):
                kept = checker.keep_records(wire.decode_entry(fields))
            pipe = client.pipeline(transaction=True)
            if kept and not _mentions(
                rewritten := {**fields, **wire.entry_fields(wire.encode_records(kept), len(kept))}, needles
            ):
                pipe.xadd(key, rewritten)
            pipe.xdel(key, entry_id)
            await pipe.execute()
        if hits:
            out[key.decode()] = len(hits)
    return out
