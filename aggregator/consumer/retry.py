"""Retrying what failed for a reason that passes: which errors are transient, and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...exporter.connection import CLUSTER_TRANSIENT_ERRORS

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 5.0

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock / serialization: retry the batch
    RedisConnectionError,
    RedisTimeoutError,
    *CLUSTER_TRANSIENT_ERRORS,  # a primary failing over
)
"""Errors that say "try again later", never "this entry is bad"."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


class Backoff:
    """Exponential backoff with jitter, interruptible by ``stop``."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.delay_s = initial_s

    def reset(self) -> None:
        self.delay_s = self.initial_s

    async def sleep(self, stop: asyncio.Event | None) -> None:
        delay = self.delay_s * (0.5 + random.random() / 2)
        self.delay_s = min(self.delay_s * 2, self.max_s)
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 500 characters (for logs and status)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]
