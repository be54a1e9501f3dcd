"""The Redis stream bus: key layout and reads (recent, range, live tail, stats).

Writers are :class:`~.redis_exporter.RedisStreamSpanExporter` and the OTLP gateway; the
aggregator reads through a consumer group. Stream ids are the timeline: an id's first part
is the Redis server time in milliseconds when the batch was added (its arrival on the bus,
which for a batch replayed from a spool is later than the events it carries).

Keys, under ``settings.stream_prefix``:

* ``:events`` (one shard) or ``:events:<i>`` for ``i < stream_shards``: the streams;
* ``:dead-letter``: entries the aggregator gave up on;
* ``:member:<group>:<consumer>`` and ``:owner:<group>:<shard>``: heartbeats of live aggregator
  members and of the members that read a shard as their own (strings with a TTL);
* ``:stats:<role>:<host>:<pid>``: counters of each live writer (see :mod:`.stats`).

With ``redis_cluster`` every shard gets a hash tag, ``:events:{<tag>}``, and its own
dead-letter stream ``:dead-letter:{<tag>}`` in the same slot, so a shard lives on one node
and the aggregator's dead-letter ``XADD`` + ``XACK`` stay one ``MULTI``. The tags are chosen
so shard ``i`` hashes to the middle of the ``i``-th of ``stream_shards`` equal slot ranges:
with the slots split evenly over the primaries (what ``redis-cli --cluster create`` does)
the shards spread evenly too.

The reads here are async (``redis.asyncio``) and bounded: each scans at most a given
number of entries, so a rare event type on a week-long stream costs a bounded amount.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from ..instrumentation import semconv
from . import wire
from .connection import AsyncClient
from .event_types import SERVER_SPAN_INDEX, span_events, time_of
from .settings import BusSettings
from .writer_stats import stats_pattern, summarize

_PAGE = 200


CLUSTER_SLOTS = 16384
SNAPSHOT_KEYS = ("{prefix}snapshot:{kind}", "{prefix}snapshot-changed:{kind}")  # hash, channel: .snapshots


@functools.cache
def cluster_tags(shards: int) -> tuple[str, ...]:
    """Hash tags of the shards: tag ``i`` is the smallest decimal number hashing to the middle of
    the ``i``-th of ``shards`` equal slot ranges.

    Deterministic (CRC16, as Redis Cluster hashes), so every writer and reader agrees.
    """
    wanted = {(2 * shard + 1) * CLUSTER_SLOTS // (2 * shards): shard for shard in range(shards)}
    tags: dict[int, str] = {}
    candidate = 0
    while len(tags) < shards:
        slot = key_slot(str(candidate).encode())
        shard = wanted.get(slot)
        if shard is not None and shard not in tags:
            tags[shard] = str(candidate)
        candidate += 1
    return tuple(tags[shard] for shard in range(shards))


def stream_keys(settings: BusSettings) -> list[str]:
    """Every stream key of the bus, one per shard."""
    if settings.redis_cluster:
        return [f"{settings.stream_prefix}:events:{{{tag}}}" for tag in cluster_tags(settings.stream_shards)]
    if settings.stream_shards == 1:
        return [f"{settings.stream_prefix}:events"]
    return [f"{settings.stream_prefix}:events:{shard}" for shard in range(settings.stream_shards)]


def dead_letter_key(settings: BusSettings, stream: str | None = None) -> str:
    """Stream of entries the aggregator gave up on (from ``stream``), each with its error.

    On a cluster each shard has its own, in its stream's slot (``stream`` is then required).
    """
    if not settings.redis_cluster:
        return f"{settings.stream_prefix}:dead-letter"
    if stream is None or not stream.endswith("}"):
        raise ValueError("on a Redis Cluster the dead-letter stream is per shard: pass the stream")
    return f"{settings.stream_prefix}:dead-letter:{stream[stream.rindex('{') :]}"


def dead_letter_keys(settings: BusSettings) -> list[str]:
    """Every dead-letter stream (one, or one per shard on a cluster)."""
    if not settings.redis_cluster:
        return [dead_letter_key(settings)]
    return [dead_letter_key(settings, stream) for stream in stream_keys(settings)]


def member_key(settings: BusSettings, consumer: str) -> str:
    """Heartbeat of a live member of ``settings.consumer_group`` (expires after ``claim_idle_ms``)."""
    return f"{settings.stream_prefix}:member:{settings.consumer_group}:{consumer}"


def owner_key(settings: BusSettings, stream: str) -> str:
    """Heartbeat of a live member that reads ``stream`` as one of its own shards (``consumer_shards``).

    On a cluster it carries the stream's hash tag, so it lives with its shard.
    """
    if settings.redis_cluster and stream.endswith("}"):
        return f"{settings.stream_prefix}:owner:{settings.consumer_group}:{stream[stream.rindex('{') :]}"
    return f"{settings.stream_prefix}:owner:{settings.consumer_group}:{stream_keys(settings).index(stream)}"


def shard_index(key: str | bytes, shards: int) -> int:
    """The shard of a user pseudonym (or, for spans without a user, a trace id): CRC-32 mod N.

    Stable across processes and Python versions (unlike ``hash``), so every writer puts one
    user's spans on the same stream.
    """
    if shards <= 1:
        return 0
    data = key if isinstance(key, bytes) else str(key).encode()
    return zlib.crc32(data) % shards


# --- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusEvent:
    """One domain event (or HTTP server span) as found on the bus."""

    stream: str
    entry_id: str
    event_type: str
    time: datetime
    user_hash: str | None
    attributes: dict[str, Any]

    @property
    def entry_time(self) -> datetime:
        """When the entry reached the bus (the first part of its id)."""
        return id_time(self.entry_id)


def id_time(entry_id: str | bytes) -> datetime:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return datetime.fromtimestamp(int(text.split("-", 1)[0]) / 1000, tz=UTC)


def time_id(moment: datetime, *, end: bool = False) -> str:
    """The stream id bounding ``moment`` (inclusive): ``<ms>-0`` or ``<ms>-<max>``."""
    ms = int(moment.timestamp() * 1000)
    return f"{ms}-18446744073709551615" if end else f"{ms}-0"


def events_of_entry(
    stream: str, entry_id: str, fields: dict[bytes, bytes], event_type: str | None = None
) -> list[BusEvent]:
    """Domain events (and ``api_request`` server spans) in one entry, in span order
    (:func:`.event_types.span_events`: the aggregator's rule, times to the microsecond as stored).

    Undecodable entries yield nothing (the aggregator dead-letters them).
    """
    try:
        records = wire.decode_entry(fields)
    except wire.WireFormatError:
        return []
    out: list[BusEvent] = []
    user_key = semconv.USER_HASH
    for record in records:
        for index, kind, time_us, user, attributes in span_events(record, event_type):
            if index == SERVER_SPAN_INDEX:
                # Under the same studyin.* attribute names as every other event's fields.
                shown = {semconv.FIELD_ATTRIBUTES[k]: v for k, v in attributes.items() if v is not None}
            else:
                shown = {k: v for k, v in attributes.items() if k != user_key}
            out.append(BusEvent(stream, entry_id, kind, time_of(time_us), user, shown))
    return out


async def recent(
    client: AsyncClient,
    settings: BusSettings,
    event_type: str | None,
    n: int,
    *,
    max_entries: int = 10_000,
) -> list[BusEvent]:
    """The ``n`` newest events of ``event_type`` (all types if ``None``), newest first.

    Scans back from the newest entry of each shard, at most ``max_entries`` entries per shard.
    """
    found: list[BusEvent] = []
    for stream in stream_keys(settings):
        mine: list[BusEvent] = []
        upper = "+"
        scanned = 0
        while len(mine) < n and scanned < max_entries:
            page: Any = await client.xrevrange(
                stream, max=upper, min="-", count=min(_PAGE, max_entries - scanned)
            )
            if not page:
                break
            for raw_id, fields in page:
                entry_id = raw_id.decode()
                events = events_of_entry(stream, entry_id, fields, event_type)
                events.sort(key=lambda e: e.time, reverse=True)
                mine.extend(events)
            scanned += len(page)
            upper = f"({page[-1][0].decode()}"
        found.extend(mine[:n])
    found.sort(key=lambda e: (e.time, e.entry_id), reverse=True)
    return found[:n]


async def between(
    client: AsyncClient,
    settings: BusSettings,
    start: datetime,
    end: datetime,
    *,
    event_type: str | None = None,
    limit: int = 10_000,
) -> list[BusEvent]:
    """Events of entries that reached the bus in ``[start, end]``, oldest first, at most ``limit``."""
    found: list[BusEvent] = []
    for stream in stream_keys(settings):
        lower = time_id(start)
        upper = time_id(end, end=True)
        count = 0
        while count < limit:
            page: Any = await client.xrange(stream, min=lower, max=upper, count=_PAGE)
            if not page:
                break
            for raw_id, fields in page:
                events = events_of_entry(stream, raw_id.decode(), fields, event_type)
                found.extend(events)
                count += len(events)
            lower = f"({page[-1][0].decode()}"
    found.sort(key=lambda e: (e.entry_id, e.time))
    return found[:limit]


async def tail(
    client: AsyncClient,
    settings: BusSettings,
    *,
    event_type: str | None = None,
    block_ms: int = 1000,
    from_id: str | None = None,
) -> AsyncIterator[BusEvent]:
    """Events as they arrive (a live tail); runs until the caller stops iterating.

    Starts after the newest entry present when called (or after ``from_id``).
    """
    cursors: dict[str, str] = {}
    for stream in stream_keys(settings):
        if from_id is not None:
            cursors[stream] = from_id
            continue
        newest: Any = await client.xrevrange(stream, count=1)
        cursors[stream] = newest[0][0].decode() if newest else "0-0"
    while True:
        response: Any
        if settings.redis_cluster:  # one XREAD per stream: several keys in one call would be cross-slot
            replies = await asyncio.gather(
                *(client.xread({s: c}, count=_PAGE, block=block_ms) for s, c in cursors.items())
            )
            response = [item for reply in replies for item in reply or []]
        else:
            response = await client.xread(cursors, count=_PAGE, block=block_ms)  # type: ignore[arg-type]
        for raw_stream, entries in response or []:
            stream = raw_stream.decode()
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                cursors[stream] = entry_id
                for event in events_of_entry(stream, entry_id, fields, event_type):
                    yield event


# --- consumer-group lag ----------------------------------------------------------------------------

_UNDELIVERED = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local key, delivered = KEYS[1], ARGV[1]
local reported, trust_above, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
if newest == nil or not before(delivered, newest[1]) then
  return {0, 1, 0, false}
end
local next_id = redis.call('XRANGE', key, '(' .. delivered, '+', 'COUNT', 1)[1][1]
local length = redis.call('XLEN', key)
if before(delivered, redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1][1]) then
  return {length, 1, 0, next_id}
end
if reported >= trust_above then
  return {math.min(reported, length), 0, 0, next_id}
end
local counted = #redis.call('XRANGE', key, '(' .. delivered, '+', 'COUNT', limit)
if counted < limit then
  return {counted, 1, 0, next_id}
end
return {counted, 0, 1, next_id}
"""
"""Entries of a stream after a group's last-delivered id, computed in Redis (nothing but ids
and counts is sent back): ``{count, exact, at_least, id of the first one}``."""
LAG_TRUST_ABOVE = 1_000
"""Redis's own ``lag`` is used only from this many entries up; below, the entries are counted."""
LAG_COUNT_LIMIT = 100_000
"""Without a usable ``lag`` from Redis (6.2, or ``nil``), entries are counted up to this many."""


@dataclass(frozen=True)
class GroupLag:
    """Where a consumer group stands on one stream."""

    group: str
    consumers: int
    pending: int
    """Delivered to a member, not acknowledged yet."""
    last_delivered_id: str
    undelivered: int
    """Entries after the last-delivered id (not read by any member yet)."""
    exact: bool
    at_least: bool
    """``undelivered`` is a lower bound: counting stopped at :data:`LAG_COUNT_LIMIT`."""
    next_id: str | None
    """The oldest entry not delivered yet (``None``: the group is caught up)."""

    @property
    def behind(self) -> int:
        """Entries the group has not acknowledged: pending plus not yet delivered."""
        return self.pending + self.undelivered


async def group_lags(client: AsyncClient, stream: str) -> list[GroupLag]:
    """Where every consumer group of ``stream`` stands (empty if there is no such stream).

    The one place that computes lag (``bus stats``, the aggregator's status and lag metric, its
    drain, the query API's pipeline figure and the benchmarks all use it), right on every
    supported Redis:

    * a group whose last-delivered id is the stream's newest entry (or past it) has **0**
      undelivered entries, whatever ``XINFO GROUPS`` says: on Redis 7.0 a promoted replica
      can report a ``lag`` of hundreds for a caught-up group, because ``XREADGROUP`` did not
      replicate the group's ``entries-read`` (after a slot migration followed by a failover:
      ``tests/cluster/test_lag_after_failover.py``). A drain waiting for 0 therefore ends;
    * a group that has read nothing still present has all ``XLEN`` entries to read;
    * otherwise Redis's ``lag`` is used when it is at least :data:`LAG_TRUST_ABOVE` (on 7.0
      after such a failover it can overstate while the group is behind, and returns to 0 as
      it catches up); smaller, or absent (Redis 6.2, or ``nil`` after ``XGROUP SETID``), the
      entries after the last-delivered id are counted in Redis, up to :data:`LAG_COUNT_LIMIT`.
    """
    try:
        groups = await client.xinfo_groups(stream)
    except aioredis.ResponseError:  # no such key
        return []
    out: list[GroupLag] = []
    for group in groups:
        delivered = _text(group["last-delivered-id"])
        reported = group.get("lag")
        counted: Any = await client.eval(
            _UNDELIVERED,
            1,
            stream,
            delivered,
            -1 if reported is None else int(reported),
            LAG_TRUST_ABOVE,
            LAG_COUNT_LIMIT,
        )
        undelivered, exact, at_least, next_id = counted
        out.append(
            GroupLag(
                _text(group["name"]),
                int(group["consumers"]),
                int(group["pending"]),
                delivered,
                int(undelivered),
                bool(exact),
                bool(at_least),
                None if next_id is None else _text(next_id),
            )
        )
    return out


async def group_lag(client: AsyncClient, stream: str, group: str) -> GroupLag | None:
    """Where ``group`` stands on ``stream`` (``None``: no such stream or group); see :func:`group_lags`."""
    return next((lag for lag in await group_lags(client, stream) if lag.group == group), None)


# --- stats ---------------------------------------------------------------------------------------


@dataclass
class GroupStats:
    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    lag: int
    """Entries not delivered yet (see :func:`group_lags`)."""
    lag_exact: bool
    lag_at_least: bool
    """``lag`` is a lower bound (counting stopped); neither this nor ``lag_exact``: Redis's count."""


@dataclass
class StreamStats:
    key: str
    length: int
    first_id: str | None
    last_id: str | None
    groups: list[GroupStats] = field(default_factory=list)

    @property
    def oldest(self) -> datetime | None:
        return id_time(self.first_id) if self.first_id else None

    @property
    def newest(self) -> datetime | None:
        return id_time(self.last_id) if self.last_id else None


@dataclass
class BusStats:
    redis_version: str
    streams: list[StreamStats]
    dead_letter_length: int
    writers: dict[str, dict[str, str]]
    totals: dict[str, float]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def stream_stats(client: AsyncClient, stream: str) -> StreamStats:
    try:
        info = await client.xinfo_stream(stream)
    except aioredis.ResponseError:  # no such key
        return StreamStats(stream, 0, None, None)
    first = info.get("first-entry")
    last = info.get("last-entry")
    result = StreamStats(
        stream,
        int(info["length"]),
        _text(first[0]) if first else None,
        _text(last[0]) if last else None,
    )
    for lag in await group_lags(client, stream):
        result.groups.append(
            GroupStats(
                lag.group,
                lag.consumers,
                lag.pending,
                lag.last_delivered_id,
                lag.undelivered,
                lag.exact,
                lag.at_least,
            )
        )
    return result


async def writer_stats(client: AsyncClient, settings: BusSettings) -> dict[str, dict[str, str]]:
    """Counters of every live writer, by key suffix ``<role>:<host>:<pid>``."""
    out: dict[str, dict[str, str]] = {}
    prefix = f"{settings.stream_prefix}:stats:"
    async for key in client.scan_iter(match=stats_pattern(settings), count=1000):
        values = await client.hgetall(key)
        out[_text(key)[len(prefix) :]] = {_text(k): _text(v) for k, v in values.items()}
    return out


async def stats(client: AsyncClient, settings: BusSettings) -> BusStats:
    """Length, oldest/newest entry, consumer-group lag and pending per stream, plus writer counters."""
    info = await client.info("server")
    version = str(info.get("redis_version", "0"))
    streams = [await stream_stats(client, key) for key in stream_keys(settings)]
    dead = sum([int(await client.xlen(key)) for key in dead_letter_keys(settings)])
    writers = await writer_stats(client, settings)
    return BusStats(version, streams, dead, writers, summarize(list(writers.values())))


def failed_events_key(settings: BusSettings) -> str:  # custom events refused by validation (replayable)
    return f"{settings.stream_prefix}:failed-events"
