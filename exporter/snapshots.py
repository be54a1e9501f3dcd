"""Snapshots published through Redis to every application: one versioned payload per kind, plus a change
notification, followed in the background so the hot path reads memory only.

A publisher (a CLI command, the API) calls :func:`publish_snapshot`; an application keeps a
:class:`SnapshotFollower` whose :meth:`~SnapshotFollower.current` is the last good snapshot: kept when
Redis is away or a published payload does not decode. Keys (:data:`.bus.SNAPSHOT_KEYS`):
``{prefix}snapshot:{kind}``, a hash of ``version`` and ``payload``, and the Pub/Sub channel
``{prefix}snapshot-changed:{kind}`` that carries the new version. Pub/Sub may lose a message (a
reconnect); the periodic poll (``refresh_interval_s``) bounds how stale a follower can be.

Used for the custom event registry (``kind="custom-schemas"``) and the experiments' assignments.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis

from .bus import SNAPSHOT_KEYS

_log = logging.getLogger(__name__)
T = TypeVar("T")

_PUBLISH = """
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'payload', ARGV[1])
redis.call('PUBLISH', ARGV[2], v)
return v
"""


def publish_snapshot(client: redis.Redis, prefix: str, kind: str, payload: bytes) -> int:
    """Store ``payload`` as the snapshot of ``kind``, bump its version and notify; returns the version.

    One Lua script: followers never see a new version with an old payload.
    """
    key, channel = (k.format(prefix=prefix, kind=kind) for k in SNAPSHOT_KEYS)
    return int(client.eval(_PUBLISH, 1, key, payload, channel))


class SnapshotFollower(Generic[T]):
    """The last good snapshot of one kind, refreshed by a daemon thread (change channel + poll)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        kind: str,
        decode: Callable[[bytes], T],
        empty: T,
        refresh_interval_s: float = 30.0,
    ) -> None:
        self._key, self._channel = (k.format(prefix=prefix, kind=kind) for k in SNAPSHOT_KEYS)
        self._decode = decode
        self._current = empty
        self.version = 0
        """Version of :meth:`current` (0: nothing loaded yet)."""
        self._payload: bytes | None = None
        # The payload is compared too: a Redis that lost its data counts versions from 1 again.
        self._interval = refresh_interval_s
        self._client: redis.Redis = redis.Redis.from_url(
            redis_url, socket_timeout=max(refresh_interval_s, 5.0), socket_connect_timeout=5.0
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def current(self) -> T:
        """The last good snapshot; no I/O."""
        return self._current

    def refresh_now(self) -> bool:
        """Load the published snapshot once; ``False`` when Redis is away or the payload is bad."""
        try:
            fields: dict[bytes, bytes] = self._client.hgetall(self._key)  # type: ignore[assignment]
        except (redis.RedisError, OSError) as exc:
            _log.debug("snapshot %s: Redis unavailable (%s)", self._key, type(exc).__name__)
            return False
        if not fields:
            return True  # nothing published yet: keep what we have
        try:
            version = int(fields[b"version"])
        except (KeyError, ValueError):
            _log.warning("snapshot %s: no version, kept the last good one", self._key)
            return False
        payload = fields.get(b"payload", b"")
        with self._lock:
            if version == self.version and payload == self._payload:
                return True
            try:
                decoded = self._decode(payload)
            except Exception as exc:  # a bad payload must never replace a good snapshot
                _log.warning(
                    "snapshot %s v%d does not decode (%s): kept v%d", self._key, version, exc, self.version
                )
                return False
            self._current, self.version, self._payload = decoded, version, payload
        return True

    def start(self) -> None:
        """Load once, then follow changes in a daemon thread."""
        if self._thread is not None:
            return
        self.refresh_now()
        self._thread = threading.Thread(target=self._run, name=f"snapshot:{self._key}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8.2
                pubsub.subscribe(self._channel)
                self.refresh_now()  # a change between the last load and the subscription
                last = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=min(self._interval, 1.0))
                    if message is not None or time.monotonic() - last >= self._interval:
                        self.refresh_now()  # a change, or the periodic poll (one HGETALL)
                        last = time.monotonic()
            except (redis.RedisError, OSError):
                self._stop.wait(min(self._interval, 1.0))
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._client.close()


async def publish_snapshot_async(client: Any, prefix: str, kind: str, payload: bytes) -> int:
    """:func:`publish_snapshot` with an asyncio client (the API)."""
    key, channel = (k.format(prefix=prefix, kind=kind) for k in SNAPSHOT_KEYS)
    return int(await client.eval(_PUBLISH, 1, key, payload, channel))
