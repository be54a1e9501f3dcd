"""The LRS forwarder: a consumer group of its own on the bus, StudyIn's learning events to the school's LRS.

Independent of the aggregator (its own group: a slow LRS never holds back the rollups). One turn: read
entries (own pending ones first: a previous life's, or claimed from a member silent for
``claim_idle_ms``), map them with the aggregator's own ``rows_from_span`` and the xAPI mapping, plan POST
batches (:mod:`.batches`), deliver each (:mod:`.delivery`), and only then, per batch, in one MULTI:
dead-letter what the LRS rejected (with its status and reason) and the events that give no valid
statement, and acknowledge the entries the batch completes.

Exactly once in the LRS: statement ids derive from event ids, so anything delivered again (killed
before the acknowledgement, claimed by another member, an LRS that stored a batch and answered 503)
is "nothing new" to the LRS (xAPI: same id, same statement). A dead letter and its entry's XACK are one
MULTI, so a rejection is dead-lettered once.

Failures: an unavailable LRS (5xx, 429, network) is retried with exponential backoff up to
``lrs_retry_max_s``, the batch in hand kept, for as long as it takes (the bus holds the rest; beyond
it the catch-up, :mod:`.catchup`); a misconfiguration (401, 403, 404) is reported in the status and
retried at the longest interval, never dead-lettered. 409 policy: docs/xapi.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...exporter import wire
from ...exporter.bus import group_lag, stream_keys
from ...exporter.connection import AsyncClient, async_client
from ...exporter.tombstone import Tombstone
from ..consumer.mapping import EventRow, rows_from_span
from ..storage.db import create_pool
from . import catchup, keys
from .auth import lrs_auth
from .batches import Batch, InvalidEvent, Plan, plan_batches
from .delivery import HttpSender, LrsMisconfigured, LrsUnavailable, Outcome, deliver
from .reports import Totals, dead_letters
from .settings import LrsSettings
from .xapi import StatementMapper

_log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes] | None]
CLAIM_INTERVAL_S = 5.0
GAP_CHECK_INTERVAL_S = 5.0
MARK_INTERVAL_S = 1.0
MARKS_KEPT = 600
DEAD_LETTER_MAX_LEN = 100_000
BACKOFF_INITIAL_S = 0.2
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, asyncpg.PostgresConnectionError)


class Stopped(Exception):
    """``stop`` was set while a batch waited for the LRS: its entries stay pending."""


class Forwarder:
    """``async with Forwarder(settings) as f: await f.run(stop)``."""

    def __init__(self, settings: LrsSettings, *, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.streams = stream_keys(settings)
        self.group = settings.lrs_consumer_group
        self.consumer = settings.consumer_name
        self.mapper = StatementMapper(settings.xapi_config(), settings.selection())
        self.statements_url = settings.statements_url
        self.state_key = keys.state_key(settings, self.group)
        self.redis: AsyncClient | None = None
        self.pool: asyncpg.Pool | None = None
        self._own_http = http is None
        self.http = http
        self.totals = Totals()
        self.started_at = time.time()
        self.last_delivery_at: float | None = None
        self.last_error: str | None = None
        self.lrs_state = "unknown"
        self.marks: deque[tuple[int, int]] = deque(maxlen=MARKS_KEPT)
        """(Redis time in ms, PostgreSQL snapshot xmin), oldest first (see :mod:`.catchup`)."""
        self._next_mark = self._next_claim = self._next_gap_check = 0.0
        self._pending_dirty = True
        self._gone: set[str] = set()
        """Streams where an entry was trimmed while pending here: a gap too."""
        self._backoff_s = BACKOFF_INITIAL_S
        self.tombstone = Tombstone(settings)

    # --- connections -------------------------------------------------------------------------

    async def __aenter__(self) -> Forwarder:
        self.redis = async_client(self.settings, socket_timeout=15, socket_connect_timeout=5)
        if self.http is None:
            self.http = httpx.AsyncClient(auth=lrs_auth(self.settings), timeout=self.settings.lrs_timeout_s)
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def catch_up_enabled(self) -> bool:
        return self.settings.lrs_catch_up and self.settings.postgres_url is not None

    async def connect(self) -> None:
        if self.pool is None and self.catch_up_enabled:
            self.pool = await create_pool(self.settings, "aggregator", min_size=1, max_size=2)
            await self.take_mark()
        await self.ensure_groups()

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=5)
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self.http is not None and self._own_http:
            await self.http.aclose()
            self.http = None

    async def ensure_groups(self) -> None:
        """Create the group where missing, just before the stream's first entry (see catchup)."""
        assert self.redis is not None
        for stream in self.streams:
            if not await self.redis.exists(stream):
                with contextlib.suppress(ResponseError):  # BUSYGROUP: created meanwhile
                    await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
                    await self._set_resume(stream, 0)  # entries there now may be stored already: all
                continue
            position = await catchup.stream_position(self.redis, stream, self.group)
            if position.last_delivered is not None:
                continue
            start, read = position.group_start()
            try:
                await self.redis.xgroup_create(stream, self.group, id=start, entries_read=read)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                continue
            await self._set_resume(stream, 0)  # entries there now may be stored already: all
            _log.info("created consumer group %s on %s at %s", self.group, stream, start)

    # --- watermarks ---------------------------------------------------------------------------

    async def take_mark(self) -> None:
        """A (Redis time, snapshot xmin) pair: entries after that time are stored at or above it."""
        if self.pool is None or self.redis is None:
            return
        xmin, _ = await catchup.snapshot(self.pool)
        seconds, micros = await self.redis.time()
        self.marks.append((int(seconds) * 1000 + int(micros) // 1000, xmin))

    def _newest_mark_before(self, entry_id: bytes | str | None) -> int | None:
        """The xmin of the newest mark taken before ``entry_id`` reached the bus (any mark: ``None``)."""
        limit = catchup.parse_id(entry_id)[0] if entry_id is not None else None
        for ms, xmin in reversed(self.marks):
            if limit is None or ms < limit:
                return xmin
        return None

    async def _set_resume(self, stream: str, xmin: int | None) -> None:
        """Record where a catch-up of ``stream`` would start (only ever forward; 0 at the group's creation:
        entries on the stream then may have been stored before any mark, so a gap then reads all)."""
        if xmin is None or self.redis is None:
            return
        field_name = keys.resume_field(stream)
        current = await self.redis.hget(self.state_key, field_name)
        if current is None or int(current) < xmin:
            await self.redis.hset(self.state_key, field_name, xmin)

    # --- reading -----------------------------------------------------------------------------

    async def _read(self, ids: str, block_ms: int | None) -> Any:
        assert self.redis is not None
        streams: dict[Any, Any] = dict.fromkeys(self.streams, ids)
        count = self.settings.lrs_read_entries
        try:
            return await self.redis.xreadgroup(
                self.group, self.consumer, streams, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            _log.warning("consumer group %s is missing (Redis restarted?): recreating it", self.group)
            await self.ensure_groups()
            return []

    async def claim_stale(self) -> int:
        """Take over entries pending for ``claim_idle_ms`` on other members (sending twice is harmless)."""
        assert self.redis is not None
        claimed = 0
        for stream in self.streams:
            cursor = "0-0"
            for _ in range(1000):
                reply: Any = await self.redis.xautoclaim(
                    stream,
                    self.group,
                    self.consumer,
                    self.settings.claim_idle_ms,
                    start_id=cursor,
                    count=self.settings.lrs_read_entries,
                )
                cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                claimed += len(reply[1])
                if len(reply) > 2 and reply[2]:
                    self._gone.add(stream)  # entries trimmed while pending: Redis dropped them
                if cursor == "0-0":
                    break
        if claimed:
            self._pending_dirty = True
            _log.info("claimed %d entries pending on silent members", claimed)
        return claimed

    def _rows_of(self, stream: str, entries: list[Entry]) -> list[tuple[str, Sequence[EventRow]]]:
        out: list[tuple[str, Sequence[EventRow]]] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if not fields:  # trimmed while pending: what it held comes from the catch-up
                self._gone.add(stream)
                out.append((entry_id, []))
                continue
            try:
                records = self.tombstone.keep_records(wire.decode_entry(fields))
                rows = [row for record in records for row in rows_from_span(record)]
            except Exception:  # the aggregator dead-letters undecodable entries; nothing to send
                self.totals.undecodable_entries += 1
                rows = []
            self.totals.entries += 1
            self.totals.events += len(rows)
            out.append((entry_id, rows))
        return out

    # --- delivering ----------------------------------------------------------------------------

    async def _sleep(self, seconds: float, stop: asyncio.Event | None) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def deliver_batch(self, batch: Batch, stop: asyncio.Event | None) -> Outcome:
        """Deliver ``batch`` whatever it takes (retries with backoff); raises :class:`Stopped`."""
        assert self.http is not None
        sender = HttpSender(self.http, self.statements_url)
        while True:
            if stop is not None and stop.is_set():
                raise Stopped
            try:
                outcome = await deliver(batch.items, sender)
            except (LrsUnavailable, LrsMisconfigured) as exc:
                misconfigured = isinstance(exc, LrsMisconfigured)
                state = f"{'misconfigured' if misconfigured else 'unavailable'}: {exc}"
                if state != self.lrs_state:
                    _log.warning("LRS %s; retrying", state)
                self.lrs_state, self.last_error = state, state
                self.totals.retries += 1
                wait = self.settings.lrs_retry_max_s if misconfigured else self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, self.settings.lrs_retry_max_s)
                await self._sleep(wait * (0.5 + random.random() / 2), stop)
                continue
            self._backoff_s = BACKOFF_INITIAL_S
            if self.lrs_state != "ok":
                _log.info("LRS takes statements")
            self.lrs_state = "ok"
            self.totals.requests += outcome.requests
            self.totals.statements_delivered += len(outcome.delivered)
            self.last_delivery_at = time.time()
            return outcome

    async def _settle(self, stream: str, batch: Batch, outcome: Outcome, invalid: list[InvalidEvent]) -> None:
        """Dead letters and the XACK of the entries ``batch`` completes, in one MULTI."""
        assert self.redis is not None
        completes = set(batch.completes)
        mine = [event for event in invalid if event.entry_id in completes]
        letters = dead_letters(outcome.rejected, mine, stream, self.consumer)
        self.totals.rejected += len(outcome.rejected)
        self.totals.conflicts += len(outcome.conflicts)
        self.totals.invalid_events += len(mine)
        for r in outcome.rejected:
            _log.warning("LRS rejected statement %s (%d): %s", r.item.statement_id, r.status, r.reason)
        dead = keys.dead_letter_key(self.settings, stream)
        async with self.redis.pipeline(transaction=True) as pipe:
            for letter in letters:
                pipe.xadd(dead, letter, maxlen=DEAD_LETTER_MAX_LEN, approximate=True)
            if batch.completes:
                pipe.xack(stream, self.group, *batch.completes)
            await pipe.execute()
        if batch.completes:  # after the XACK: a crash in between leaves an older, safe watermark
            bound = batch.completes[-1]
            summary: Any = await self.redis.xpending(stream, self.group)
            oldest = summary.get("min")
            if oldest is not None and catchup.parse_id(oldest) < catchup.parse_id(bound):
                bound = oldest  # an entry still pending (another member's) must stay covered
            await self._set_resume(stream, self._newest_mark_before(bound))

    async def forward(self, stream: str, entries: list[Entry], stop: asyncio.Event | None) -> Plan:
        """Deliver and acknowledge ``entries`` of ``stream`` (raises :class:`Stopped` on stop)."""
        if self.redis is not None:  # erased learners' late events are never sent (docs/privacy.md)
            await self.tombstone.refresh(self.redis)
        rows = self._rows_of(stream, entries)
        if self._gone:  # entries trimmed while pending: the catch-up is recorded before they are acked
            await self.check_gaps()
        plan = plan_batches(
            rows,
            self.mapper,
            max_statements=self.settings.lrs_batch_statements,
            max_bytes=self.settings.lrs_batch_bytes,
        )
        for reason, count in plan.skipped.items():
            self.totals.skipped[reason.value] += count
        for batch in plan.batches:
            outcome = await self.deliver_batch(batch, stop) if batch.items else Outcome()
            await self._settle(stream, batch, outcome, plan.invalid)
        return plan

    # --- catch-up -------------------------------------------------------------------------------

    async def check_gaps(self) -> list[str]:
        """Streams whose unread entries were trimmed; starts (or widens) the catch-up for them.

        The catch-up is recorded in Redis before the group's cursor moves past the gap (or the trimmed
        pending entries are acknowledged): a forwarder killed in between finds the gap or the record."""
        assert self.redis is not None
        gapped = set(self._gone)
        moves: dict[str, tuple[str, int | None]] = {}
        for stream in self.streams:
            position = await catchup.stream_position(self.redis, stream, self.group)
            if position.gap and position.first is not None:
                gapped.add(stream)
                moves[stream] = position.group_start()
        if not gapped:
            return []
        self.totals.gaps += len(gapped)
        resumes = [await self.redis.hget(self.state_key, keys.resume_field(s)) for s in sorted(gapped)]
        if not self.catch_up_enabled or self.pool is None or any(r is None for r in resumes):
            self.last_error = f"entries trimmed before delivery on {', '.join(sorted(gapped))}: no catch-up"
            _log.error("%s (catch-up needs postgres_url and a watermark)", self.last_error)
        else:
            start = min(int(r) for r in resumes if r is not None)
            _, end = await catchup.snapshot(self.pool)
            current = await self.redis.hget(self.state_key, keys.CATCHUP_FIELD)
            state = catchup.CatchUp(start, end, start)
            if current is not None:
                state = catchup.CatchUp.loads(current).widened(start, end)
            await self.redis.hset(self.state_key, keys.CATCHUP_FIELD, state.dumps())
            _log.warning("entries trimmed before delivery on %s: catching up from PostgreSQL", sorted(gapped))
        for stream, (group_start, read) in moves.items():  # the group reads on from the first entry there is
            await self.redis.xgroup_setid(stream, self.group, group_start, entries_read=read)
        self._gone.clear()
        return sorted(gapped)

    async def catch_up(self, stop: asyncio.Event | None) -> int:
        """Run the catch-up recorded in Redis, if any, to its end; returns the events read."""
        assert self.redis is not None
        current = await self.redis.hget(self.state_key, keys.CATCHUP_FIELD)
        if current is None or self.pool is None:
            return 0
        state = catchup.CatchUp.loads(current)
        if not await catchup.wait_settled(self.pool, state.end):
            _log.warning("transactions begun before the catch-up still run; reading what is committed")
        types = sorted(self.mapper.selection.event_types)
        read = 0
        while True:
            rows, after = await catchup.next_page(self.pool, state, types)
            if not rows:
                break
            plan = plan_batches(
                [("catch-up", rows)],
                self.mapper,
                max_statements=self.settings.lrs_batch_statements,
                max_bytes=self.settings.lrs_batch_bytes,
            )
            for batch in plan.batches:
                outcome = await self.deliver_batch(batch, stop) if batch.items else Outcome()
                await self._dead_letter_catch_up(outcome, plan.invalid if batch is plan.batches[-1] else [])
            read += len(rows)
            self.totals.catch_up_events += len(rows)
            state = after
            await self.redis.hset(self.state_key, keys.CATCHUP_FIELD, state.dumps())
        await self.redis.hdel(self.state_key, keys.CATCHUP_FIELD)
        _log.info("catch-up done: %d raw events read again", read)
        return read

    async def _dead_letter_catch_up(self, outcome: Outcome, invalid: list[InvalidEvent]) -> None:
        """Rejections met during the catch-up (a page retried after a crash may repeat one)."""
        assert self.redis is not None
        letters = dead_letters(outcome.rejected, invalid, "postgresql", self.consumer)
        self.totals.rejected += len(outcome.rejected)
        self.totals.invalid_events += len(invalid)
        dead = keys.dead_letter_key(self.settings, self.streams[0])
        for letter in letters:
            await self.redis.xadd(dead, letter, maxlen=DEAD_LETTER_MAX_LEN, approximate=True)

    # --- the loop -------------------------------------------------------------------------------

    async def step(self, block_ms: int | None, stop: asyncio.Event | None) -> int:
        """One turn: marks, claims, gaps, then one read delivered and acknowledged. Returns entries."""
        assert self.redis is not None
        now = time.monotonic()
        if now >= self._next_mark:
            self._next_mark = now + MARK_INTERVAL_S
            await self.take_mark()
        if now >= self._next_claim:
            self._next_claim = now + CLAIM_INTERVAL_S
            await self.claim_stale()
        if now >= self._next_gap_check or self._gone:
            self._next_gap_check = now + GAP_CHECK_INTERVAL_S
            await self.check_gaps()
            await self.catch_up(stop)
        response: Any = []
        if self._pending_dirty:
            response = await self._read("0", None)
            if not any(entries for _, entries in response or []):
                self._pending_dirty = False
                response = []
        if not response:
            response = await self._read(">", block_ms)
        done = 0
        for raw_stream, entries in response or []:
            if entries:
                try:
                    await self.forward(raw_stream.decode(), entries, stop)
                except BaseException:
                    self._pending_dirty = True
                    raise
                done += len(entries)
        return done

    async def lag(self) -> int:
        assert self.redis is not None
        total = 0
        for stream in self.streams:
            found = await group_lag(self.redis, stream, self.group)
            total += found.behind if found is not None else int(await self.redis.xlen(stream))
        return total

    async def drain(self, timeout_s: float = 60.0) -> Totals:
        """Forward until nothing is left (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        expired = asyncio.Event()  # also ends a delivery retrying an unavailable LRS
        timer = asyncio.get_running_loop().call_later(timeout_s, expired.set)
        try:
            while time.monotonic() < deadline:
                if await self.step(50, expired) == 0 and not self._pending_dirty and await self.lag() == 0:
                    return self.totals
        except Stopped:
            pass
        finally:
            timer.cancel()
        raise TimeoutError(f"bus not drained after {timeout_s}s (LRS: {self.lrs_state})")

    async def run(self, stop: asyncio.Event) -> None:
        """Forward until ``stop``; survives Redis, PostgreSQL and LRS outages."""
        backoff = BACKOFF_INITIAL_S
        while not stop.is_set():
            try:
                if self.redis is None:
                    self.redis = async_client(self.settings, socket_timeout=15, socket_connect_timeout=5)
                await self.step(1000, stop)
                backoff = BACKOFF_INITIAL_S
            except Stopped:
                break
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self._pending_dirty = True
                if isinstance(exc, TRANSIENT):
                    _log.warning("connection problem (%s); retrying", self.last_error)
                else:
                    _log.exception("unexpected error in the forwarder loop")
                if isinstance(exc, asyncpg.PostgresConnectionError | OSError) and self.pool is not None:
                    self.pool.terminate()
                    self.pool = None
                await self._sleep(backoff, stop)
                backoff = min(backoff * 2, 5.0)
                with contextlib.suppress(Exception):
                    await self.connect()

    async def status(self) -> dict[str, Any]:
        """Health and lag (what ``--status`` prints and ``/status`` serves; :mod:`.status`)."""
        from .status import forwarder_status

        return await forwarder_status(self)
