"""Snapshots published through the bus's Redis: a value, its version, a change notification.

A writer (the aggregator's CLI or API) calls :func:`publish_snapshot`: the payload and a version bump in
one ``MULTI``, then a ``PUBLISH`` of the new version. Apps follow it with :class:`SnapshotFollower`: a
background thread loads the snapshot at start, on every notification and every ``refresh_interval_s``
(a missed notification costs at most that long), decodes it once and swaps it in; :meth:`current` is a
plain attribute read, no I/O. When Redis is away, or a payload does not decode, the follower keeps the
last good snapshot (``empty`` before the first one) and tries again later.

Keys, under the bus's ``stream_prefix``: ``<prefix>:snapshot:<kind>`` (payload),
``<prefix>:snapshot:<kind>:version`` (a counter); channel ``<prefix>:snapshot:<kind>``.

(Minimal version of the experiments branch; the custom-events branch owns the full module with this
interface.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

__all__ = ["SnapshotFollower", "publish_snapshot"]

T = TypeVar("T")
_log = logging.getLogger(__name__)


def _keys(prefix: str, kind: str) -> tuple[str, str, str]:
    base = f"{prefix}:snapshot:{kind}"
    return base, f"{base}:version", base


def publish_snapshot(client: redis.Redis, prefix: str, kind: str, payload: bytes) -> int:
    """Store ``payload`` as the snapshot of ``kind``, bump its version, notify followers; the version."""
    data_key, version_key, channel = _keys(prefix, kind)
    pipe = client.pipeline(transaction=True)
    pipe.set(data_key, payload)
    pipe.incr(version_key)
    version = int(pipe.execute()[1])
    client.publish(channel, str(version))
    return version


class SnapshotFollower(Generic[T]):
    """The last good decoded snapshot of ``kind``, refreshed in the background (module docstring)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        kind: str,
        decode: Callable[[bytes], T],
        empty: T,
        refresh_interval_s: float = 30.0,
    ) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._data_key, self._version_key, self._channel = _keys(prefix, kind)
        self._decode = decode
        self._value = empty
        self._version: int | None = None
        self._payload: bytes | None = None
        self._interval = refresh_interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def current(self) -> T:
        return self._value

    @property
    def version(self) -> int | None:
        """The version of the snapshot held (``None``: none loaded yet)."""
        return self._version

    def refresh_now(self) -> bool:
        """Load the snapshot if its version changed; False when Redis or the payload failed (kept the old)."""
        with self._lock:
            try:
                version_raw, payload = self._client.mget(self._version_key, self._data_key)
            except redis.RedisError as exc:
                _log.debug("snapshot %s not refreshed: %s", self._data_key, type(exc).__name__)
                return False
            if version_raw is None or payload is None:
                return True  # nothing published yet: ``empty`` stands
            version = int(version_raw)
            payload = payload if isinstance(payload, bytes) else str(payload).encode()
            if version == self._version and payload == self._payload:
                return True  # (the payload too: a Redis that lost its data counts versions from 1 again)
            try:
                value = self._decode(payload)
            except Exception as exc:  # a bad payload: keep the last good one
                _log.warning("snapshot %s version %d refused: %s", self._data_key, version, exc)
                return False
            self._value, self._version, self._payload = value, version, payload
            return True

    def start(self) -> None:
        """Load once now (never raises), then follow in two daemon threads (timer and notifications)."""
        self.refresh_now()
        for target in (self._poll, self._listen):
            thread = threading.Thread(target=target, name=f"snapshot-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stop.is_set():
                self.refresh_now()

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self._wake.set()
            except redis.RedisError:
                self._stop.wait(min(self._interval, 5.0))
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._client.close()
