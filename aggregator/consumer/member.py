"""A consumer-group member's state and connections (Redis client, PostgreSQL pool, the group).

The base of the :class:`~.service.Aggregator` layers (see service.py): every layer reads and
sets the attributes declared in ``Member.__init__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import date
from typing import Self

import asyncpg
from redis.exceptions import ResponseError

from ...exporter.bus import stream_keys
from ...exporter.connection import AsyncClient, async_client
from ...exporter.tombstone import Tombstone
from ...instrumentation.settings_base import ConfigurationError
from ..storage.db import create_pool
from ..storage.variant import check_variant
from . import rollups
from .availability import POSTGRES, REDIS, ServiceStates, install_pool_floor_filter
from .batches import BatchResult, Round
from .custom_events import CustomGate
from .settings import AggregatorSettings as Settings

_log = logging.getLogger(__name__)

KEEPER_STOP_S = 5.0
"""``close`` waits at most this long for the heartbeat loop to end (it ends at its next turn)."""


class Member:
    """State and connections of one aggregator process. Use as ``async with Aggregator(settings) as agg``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams = stream_keys(settings)
        self.own_streams = [self.streams[shard] for shard in settings.preferred_shards]
        """Shards read for new entries every batch (``consumer_shards``; all by default)."""
        self._adopted: set[str] = set()
        """Other shards read too, for now, because their entries found no reader (see ``adopt_orphans``)."""
        self.group = settings.consumer_group
        self.consumer = settings.consumer_name
        self.redis: AsyncClient | None = None
        self.pool: asyncpg.Pool | None = None
        self._partitions: set[date] = set()
        self.totals = BatchResult()
        self.started_at = time.time()
        self.last_batch_at: float | None = None
        self.last_error: str | None = None
        self.services = ServiceStates(_log)
        """Redis and PostgreSQL available or not (``redis_ok``, ``postgres_ok``): a change is logged once."""
        self._remove_floor_filter: Callable[[], None] | None = None
        self._next_claim = 0.0
        self._entered_at = time.monotonic()
        self._alive_at = 0.0
        """When the consume loop last turned (the heartbeat lapses if it stops)."""
        self._keeper: asyncio.Task[None] | None = None
        self._keeper_stopping = False
        """Set by ``close``: the heartbeat loop ends at its next turn even if its cancellation was lost."""
        self._next_maintenance = 0.0
        self._stop: asyncio.Event | None = None
        self._events_per_entry = 50.0  # running estimate, sizes the reads
        self._pending_dirty = True
        self.custom_gate = CustomGate()  # custom events: validation against the registry (custom_events.py)
        """Own pending entries may exist that no batch in hand holds (start, claims, failures)."""
        self.tombstone = Tombstone(settings)
        """Erased learners: their late events are dropped as entries are mapped (docs/privacy.md)."""
        self.on_committed: Callable[[str, list[bytes]], None] | None = None
        """Called with (stream, entry ids) right after their transaction committed (benchmarks)."""
        self._round: Round | None = None
        """The transaction open over consecutive batches of new entries (see ``_step``)."""
        self._closing: asyncio.Task[None] | None = None
        """The previous round, committing while the next batch is read and mapped."""
        self.on_transaction: Callable[[int, int, float], None] | None = None
        """Called with (rows, rows inserted, seconds) after each committed transaction (self-telemetry)."""

    @property
    def redis_ok(self) -> bool:
        return self.services.is_up(REDIS)

    @redis_ok.setter
    def redis_ok(self, ok: bool) -> None:
        self.services.set(REDIS, ok, self.last_error)

    @property
    def postgres_ok(self) -> bool:
        return self.services.is_up(POSTGRES)

    @postgres_ok.setter
    def postgres_ok(self, ok: bool) -> None:
        self.services.set(POSTGRES, ok, self.last_error)

    async def __aenter__(self) -> Self:
        self._entered_at = time.monotonic()
        self._keeper_stopping = False
        self._remove_floor_filter = install_pool_floor_filter(self.services)
        self.redis = async_client(
            self.settings, socket_timeout=15, socket_connect_timeout=5, health_check_interval=15
        )
        try:
            # Unreachable at start-up: fail at once with the reason (the CLI exits 1 naming the
            # server; a supervisor restarts it). Once running, outages are waited out instead.
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """(Re-)establish the consumer group and PostgreSQL; raises transient errors."""
        assert self.redis is not None
        await self.ensure_groups()
        self.redis_ok = True
        if self.pool is None:
            self.pool = await self._create_pool()
            self.postgres_ok = True

    async def _create_pool(self) -> asyncpg.Pool:
        # Every connection gets its delta tables (see rollups.setup_connection); one holds the
        # open round, one the round committing, one creates partitions, one answers status probes.
        try:
            pool = await create_pool(
                self.settings, "aggregator", min_size=1, max_size=4, setup_session=rollups.setup_connection
            )
        except asyncpg.UndefinedTableError as exc:
            raise ConfigurationError(
                f"schema {self.settings.postgres_schema!r} has no analytics tables ({exc}): "
                "run `studyin-analytics migrate` first"
            ) from exc
        try:  # the raw tables and probes of the schema's variant, or a clear refusal
            async with pool.acquire() as conn:
                await check_variant(
                    conn, self.settings.postgres_schema, self.settings.postgres_schema_variant
                )
        except BaseException:
            await pool.close()
            raise
        return pool

    async def close(self) -> None:
        if self._remove_floor_filter is not None:
            self._remove_floor_filter()
            self._remove_floor_filter = None
        if self._keeper is not None:
            # The flag, not only the cancellation, ends the heartbeat loop: redis-py's pipeline can
            # swallow a CancelledError that lands while it returns its connection (measured: ~1 in 4
            # cancellations of an in-flight heartbeat), and the loop then went on sleeping and beating
            # forever while this await waited for it: a SIGTERM never ended the process.
            keeper, self._keeper = self._keeper, None
            self._keeper_stopping = True
            keeper.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({keeper}, timeout=KEEPER_STOP_S)
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    async def _drop_pool(self) -> None:
        self.postgres_ok = False
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.terminate()

    async def ensure_groups(self) -> None:
        assert self.redis is not None
        for stream in self.streams:
            try:
                # From 0: after a Redis that lost the group, the whole bus is replayed and the
                # idempotent insert turns what was already counted into no-ops.
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _add_totals(self, result: BatchResult) -> None:
        for name, value in asdict(result).items():
            setattr(self.totals, name, getattr(self.totals, name) + value)
