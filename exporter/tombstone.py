"""The tombstone of erased learners: every writer and reader of the bus drops their late events.

``studyin-analytics learner erase`` adds the learner's pseudonyms (``user.hash`` under every key,
``user.lrs_hash`` under every LRS key) to a Redis set, ``<stream prefix>:erased``, and bumps
``<stream prefix>:erased:version``. The set holds no pseudonym itself but a digest of each
(BLAKE2b-128 with a personalisation of its own), so a scan of Redis for a pseudonym finds nothing;
whoever holds a pseudonym can still tell it was erased, which is what the check needs.

Who checks (docs/privacy.md): the aggregator (each entry's rows), the gateway (each request's
records), the app's span exporter (each batch) and the LRS forwarder (each entry's rows). Each
keeps the digests in a ``frozenset`` in memory and reads the version key at most once every
:data:`REFRESH_S` seconds (one ``GET``; ``SMEMBERS`` only when it changed), so the hot path pays
a dict lookup per distinct learner at most (the digest of a pseudonym is cached) and nothing at
all while nobody was ever erased. An event written within :data:`REFRESH_S` of an erasure may
pass a writer; the readers, and the erasure's own bus pass, still catch it.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..instrumentation import semconv
from .settings import BusSettings
from .wire import SpanRecord

REFRESH_S = 5.0
"""How stale a process's copy of the tombstone may be, at most (seconds)."""

IDENTITY_ATTRIBUTES = (semconv.USER_HASH, semconv.USER_LRS_HASH)
"""The attributes that name a learner on the wire."""


def tombstone_key(settings: BusSettings) -> str:
    """The Redis set of erased pseudonyms' digests."""
    return f"{settings.stream_prefix}:erased"


def version_key(settings: BusSettings) -> str:
    """A counter bumped by every erasure: processes re-read the set only when it moved."""
    return f"{settings.stream_prefix}:erased:version"


@functools.lru_cache(maxsize=65_536)
def digest(pseudonym: str) -> str:
    """What the tombstone stores for ``pseudonym`` (one-way; not the pseudonym)."""
    return hashlib.blake2b(pseudonym.encode(), digest_size=16, person=b"studyin-erased").hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Tombstone:
    """A process's copy of the tombstone, refreshed from Redis at most every ``refresh_s`` seconds."""

    def __init__(self, settings: BusSettings, refresh_s: float = REFRESH_S) -> None:
        self.key = tombstone_key(settings)
        self.version_key = version_key(settings)
        self.refresh_s = refresh_s
        self.digests: frozenset[str] = frozenset()
        self._version: Any = None
        self._next = 0.0

    def erased(self, pseudonym: object) -> bool:
        """True if ``pseudonym`` (any value) is a string whose learner was erased."""
        if not self.digests or type(pseudonym) is not str:
            return False
        return digest(pseudonym) in self.digests

    def _due(self, force: bool) -> bool:
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + self.refresh_s
        return True

    def _take(self, members: Iterable[Any]) -> None:
        self.digests = frozenset(_text(m) for m in members)

    async def refresh(self, client: Any, *, force: bool = False) -> None:
        """Re-read the set if its version moved (an async Redis client; at most every ``refresh_s``)."""
        if not self._due(force):
            return
        version = await client.get(self.version_key)
        if version != self._version or force:
            self._take(await client.smembers(self.key))
            self._version = version

    def refresh_sync(self, client: Any, *, force: bool = False) -> None:
        """:meth:`refresh` with a synchronous client (the app's span exporter)."""
        if not self._due(force):
            return
        version = client.get(self.version_key)
        if version != self._version or force:
            self._take(client.smembers(self.key))
            self._version = version

    def names_erased(self, attributes: Any) -> bool:
        """True if ``attributes`` (a mapping or ``None``) name an erased learner."""
        if not self.digests or not attributes:
            return False
        return any(self.erased(attributes.get(name)) for name in IDENTITY_ATTRIBUTES)

    def record_erased(self, record: SpanRecord) -> bool:
        """True if the bus record (its span or any of its events) names an erased learner."""
        if not self.digests:
            return False
        return self.names_erased(record.attributes) or any(
            self.names_erased(event.attributes) for event in record.events
        )

    def keep_records(self, records: Sequence[SpanRecord]) -> list[SpanRecord]:
        """``records`` without those of erased learners."""
        if not self.digests:
            return list(records)
        return [r for r in records if not self.record_erased(r)]

    def span_erased(self, span: Any) -> bool:
        """True if an OpenTelemetry ``ReadableSpan`` (or its events) names an erased learner."""
        if not self.digests:
            return False
        return self.names_erased(span.attributes) or any(self.names_erased(e.attributes) for e in span.events)


async def add(client: Any, settings: BusSettings, pseudonyms: Iterable[str]) -> int:
    """Add ``pseudonyms`` to the tombstone (their digests) and bump its version; returns how many were new."""
    digests = sorted({digest(p) for p in pseudonyms})
    if not digests:
        return 0
    pipe = client.pipeline(transaction=True)
    pipe.sadd(tombstone_key(settings), *digests)
    pipe.incr(version_key(settings))
    added, _version = await pipe.execute()
    return int(added)


async def contains(client: Any, settings: BusSettings, pseudonyms: Iterable[str]) -> bool:
    """True if every one of ``pseudonyms`` is in the tombstone."""
    digests = [digest(p) for p in pseudonyms]
    if not digests:
        return True
    flags = await client.smismember(tombstone_key(settings), digests)
    return all(bool(f) for f in flags)
