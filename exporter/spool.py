"""A bounded on-disk spool for batches Redis did not take, one directory per process.

Each exporter process owns one directory ``<base>/<host>-<pid>-<token>`` and holds an
exclusive ``flock`` on its ``lock`` file for as long as it lives. Nothing is shared across
processes: after ``fork()`` the child opens a spool of its own (the parent's files stay
the parent's). A batch is one file (``<seq>.batch``: msgpack of ``[stream key, span
count, blob]``), written to a temporary name and renamed, so a reader never sees half a
file. Files are replayed in the order they were written.

A directory whose lock is free belongs to a process that is gone (crashed, or shut down
while Redis was away): the next spool opened on the same base adopts it and replays its
files before its own. The bound (``spool_max_bytes``) counts every file this process
holds, adopted ones included; a batch that would cross it is refused and the caller
counts its spans as dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import socket
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgpack

_log = logging.getLogger(__name__)

_SUFFIX = ".batch"
_LOCK = "lock"


class SpooledBatch(NamedTuple):
    path: Path
    stream: str
    spans: int
    blob: bytes
    size: int


def default_base(redis_url: str, stream_prefix: str, spool_dir: Path | None) -> Path:
    """The base directory of every spool of one bus (one Redis database and key prefix).

    Spools of different buses never adopt each other's files: the bus identity is hashed
    into the path (the URL itself, which may hold a password, never appears).
    """
    root = spool_dir if spool_dir is not None else Path(tempfile.gettempdir()) / "studyin-analytics-spool"
    digest = hashlib.sha256(f"{redis_url}\0{stream_prefix}".encode()).hexdigest()[:16]
    return root / digest


class Spool:
    """The spool of one process; not thread-safe (the exporter serializes access)."""

    def __init__(self, base: Path, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.pid = os.getpid()
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._seq = 0
        self._files: deque[tuple[Path, int]] = deque()
        self._adopted: list[tuple[Path, int]] = []  # (directory, lock fd) of dead processes
        self.bytes = 0
        self._adopt_orphans()

    # --- ownership -----------------------------------------------------------------------------

    def _own_dir(self) -> Path:
        if self._dir is None:
            name = f"{socket.gethostname()}-{self.pid}-{secrets.token_hex(4)}"
            directory = self.base / name
            directory.mkdir(parents=True, mode=0o700)
            fd = os.open(directory / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.set_inheritable(fd, False)
            self._dir, self._lock_fd = directory, fd
        return self._dir

    def _adopt_orphans(self) -> None:
        if not self.base.is_dir():
            return
        for directory in sorted(self.base.iterdir()):
            lock = directory / _LOCK
            if not lock.is_file():
                continue
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live process owns it
                os.close(fd)
                continue
            os.set_inheritable(fd, False)
            files = sorted(directory.glob(f"*{_SUFFIX}"))
            if not files:
                self._remove_dir(directory, fd)
                continue
            self._adopted.append((directory, fd))
            for path in files:
                size = path.stat().st_size
                self._files.append((path, size))
                self.bytes += size
            _log.info("adopted %d spooled batches of a finished process", len(files))

    @staticmethod
    def _remove_dir(directory: Path, fd: int) -> None:
        for path in directory.glob("*"):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            directory.rmdir()
        os.close(fd)

    # --- queue ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    def append(self, stream: str, count: int, blob: bytes) -> bool:
        """Spool one batch; ``False`` (nothing written) if it would cross the bound."""
        data = msgpack.packb([stream, count, blob], use_bin_type=True)
        if self.bytes + len(data) > self.max_bytes:
            return False
        directory = self._own_dir()
        self._seq += 1
        path = directory / f"{self._seq:012d}{_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        self._files.append((path, len(data)))
        self.bytes += len(data)
        return True

    def peek(self, limit: int) -> Iterator[SpooledBatch]:
        """The oldest ``limit`` batches, in order (unreadable files are skipped and removed)."""
        taken = 0
        for path, size in list(self._files):
            if taken >= limit:
                return
            try:
                stream, count, blob = msgpack.unpackb(path.read_bytes(), raw=False)
            except Exception as exc:
                _log.warning("discarding unreadable spool file %s: %s", path.name, type(exc).__name__)
                self._forget(path, size)
                continue
            taken += 1
            yield SpooledBatch(path, str(stream), int(count), bytes(blob), size)

    def remove(self, batch: SpooledBatch) -> None:
        """Forget a batch that Redis took (it must be the oldest)."""
        self._forget(batch.path, batch.size)

    def _forget(self, path: Path, size: int) -> None:
        with contextlib.suppress(ValueError):
            self._files.remove((path, size))
        self.bytes -= size
        with contextlib.suppress(OSError):
            path.unlink()
        if self._adopted:
            still = [(d, fd) for d, fd in self._adopted if any(p.parent == d for p, _ in self._files)]
            for directory, fd in self._adopted:
                if (directory, fd) not in still:
                    self._remove_dir(directory, fd)
            self._adopted = still

    def close(self) -> None:
        """Release the lock; remaining files are adopted by the next spool on this base."""
        for _, fd in self._adopted:
            os.close(fd)
        self._adopted = []
        if self._lock_fd is not None and self._dir is not None:
            if not any(p.parent == self._dir for p, _ in self._files):
                self._remove_dir(self._dir, self._lock_fd)
            else:
                os.close(self._lock_fd)
            self._lock_fd = None
            self._dir = None
        self._files.clear()
        self.bytes = 0

    def abandon_after_fork(self) -> None:
        """In a forked child: drop the parent's spool from memory without touching its files.

        The inherited lock descriptor is shared with the parent (same open file), so closing
        the child's copy leaves the parent's lock in place.
        """
        for _, fd in self._adopted:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
        self._adopted = []
        self._lock_fd = None
        self._dir = None
        self._files.clear()
        self.bytes = 0
