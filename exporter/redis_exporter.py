"""``RedisStreamSpanExporter``: a SpanExporter that appends each batch to the Redis stream bus.

One export call is one round trip: a pipeline with one ``XADD`` per shard that the batch
touches (one with a single shard), the periodic ``XTRIM MAXLEN ~`` hard cap, and the
``HSET``/``EXPIRE`` of this process's counters. Every ``XADD`` trims by ``MINID ~`` to the
retention.

Delivery: a Redis error is retried with exponential backoff for ``export_retry_s`` (2 s;
never beyond the export deadline ``export_timeout_s``: the batch processor's single worker
waits meanwhile, and its queue fills); then the batch goes to a bounded on-disk :class:`~.spool.Spool`
and the exporter stops trying Redis for a second at a time (so a dead Redis costs the
batch processor's worker one failed connect per second, not one per batch). While the
spool holds anything, new batches queue behind it; each export first replays the spool
(oldest first), and so does a background thread once a second while the spool is not
empty (an idle app does not keep spooled spans waiting). Only a batch that would cross
``spool_max_bytes`` is dropped, counted in ``spans_dropped`` and logged with its span
count (never values).

The bus is at-least-once (a round trip that fails after Redis applied it is retried); the
aggregator's deterministic event ids make the effect exactly-once.

Fork-safe: after ``fork()`` (gunicorn/uvicorn workers) the child opens its own connection
and its own spool directory; the parent's connection and spool files are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..instrumentation import semconv
from ..instrumentation.privacy import PrivacyGuard, Pseudonymizer
from ..instrumentation.settings import PseudonymKeySettings
from ..instrumentation.settings_base import require
from . import replication, wire
from .bus import shard_index, stream_keys
from .connection import UNAVAILABLE_ERRORS, SyncClient, sync_client, unavailable
from .settings import ExporterSettings, get_settings
from .spool import Spool, default_base
from .tombstone import Tombstone
from .writer_stats import STATS_TTL_S, WriterStats, stats_key

_log = logging.getLogger(__name__)

Batch = tuple[str, int, bytes]  # (stream key, span count, encoded blob)

TRIM_INTERVAL_S = 10.0
"""How often the hard length cap (``XTRIM MAXLEN ~``) rides along with a write."""
PROBE_INTERVAL_S = 1.0
"""After giving up on Redis, batches go straight to the spool for this long."""
REPLAY_CHUNK = 64
"""Spooled batches per round trip while replaying."""
_INITIAL_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0


def default_guard(settings: PseudonymKeySettings) -> PrivacyGuard:
    """The privacy guard of a writer: raw user ids are hashed when keys are configured."""
    if settings.active_key_id is None:
        return PrivacyGuard()
    return PrivacyGuard(Pseudonymizer.from_settings(settings))


def _user_key(span: Any) -> Any:
    """What a span is sharded by: its user pseudonym, else its trace id (a log event's uid)."""
    if type(span) is wire.SpanRecord:  # a log event of the logs exporter
        record = span
        user = record.events[0].attributes.get(semconv.USER_HASH) if record.events else None
        return record.trace_id if user is None else user
    attributes = span.attributes or {}
    value = attributes.get(semconv.USER_HASH)
    if value is None:
        for event in span.events:
            value = (event.attributes or {}).get(semconv.USER_HASH)
            if value is not None:
                break
    if value is None:
        return span.context.trace_id.to_bytes(16, "big")
    return value


class RedisStreamSpanExporter(SpanExporter):
    """Writes one stream entry per export batch and shard (one round trip), trimmed to the retention.

    Constructible with no arguments (``OTEL_TRACES_EXPORTER=studyin_redis``): settings then
    come from ``STUDYIN_ANALYTICS_*`` variables.
    """

    def __init__(
        self,
        settings: ExporterSettings | None = None,
        *,
        guard: PrivacyGuard | None = None,
        client: SyncClient | None = None,
        role: str = "exporter",
    ) -> None:
        self._role = role  # names this writer's counters (the logs exporter writes through one too)
        self._settings = settings or get_settings()
        self._url = require(self._settings.redis_url, "redis_url")
        self._streams = stream_keys(self._settings)
        self._guard = guard or default_guard(self._settings)
        self._retention_ms = int(self._settings.retention_days * 86_400_000)
        self._deadline_s = self._settings.export_timeout_s
        self._retry_s = min(self._settings.export_retry_s, self._deadline_s)
        self._spool_base = default_base(self._url, self._settings.stream_prefix, self._settings.spool_dir)
        self._given_client = client
        self._lock = threading.Lock()
        self._shutdown = False
        self._left_on_disk = 0
        """Batches still spooled when this exporter shut down (on disk, for the next one)."""
        self._last_failure: str | None = None
        self.stats = WriterStats()
        self._tombstone = Tombstone(self._settings)
        self._open_process_resources()
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            exporter = ref()
            if exporter is not None:
                exporter._after_fork()

        os.register_at_fork(after_in_child=after_fork_in_child)

    # --- per-process resources ---------------------------------------------------------------------

    def _open_process_resources(self) -> None:
        self._pid = os.getpid()
        # Built on first use: a cluster client connects when built, and a Redis that is down
        # at start-up must cost a spooled batch, not the app's start.
        self._client: SyncClient | None = self._given_client
        self._spool = Spool(self._spool_base, self._settings.spool_max_bytes)
        self._stats_key = stats_key(self._settings, self._role, self._pid)
        self._down_until = 0.0
        self._next_trim = 0.0
        self._replayer: threading.Thread | None = None

    def _connection(self) -> SyncClient:
        if self._client is None:
            wait_s = self._settings.redis_wait_timeout_ms / 1000 if self._settings.redis_wait_replicas else 0
            self._client = sync_client(
                self._settings,
                socket_timeout=min(self._deadline_s, 5.0) + wait_s,  # a WAIT blocks up to its timeout
                socket_connect_timeout=min(self._deadline_s, 1.0),
                retries=0,  # this class does its own retrying, within the deadline
            )
        return self._client

    def _after_fork(self) -> None:
        """In a forked child: new lock, connection, spool and counters; leave the parent's alone."""
        self._lock = threading.Lock()
        self._spool.abandon_after_fork()
        self._given_client = None  # a client handed in belongs to the parent
        self.stats.reset()
        self._open_process_resources()

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # fork without the at-fork hook (e.g. os.fork from C)
            self._after_fork()

    # --- counters (kept for callers of the foundation API) ----------------------------------------

    @property
    def spans_exported(self) -> int:
        return self.stats.spans_exported

    @property
    def batches_exported(self) -> int:
        return self.stats.batches_exported

    @property
    def spans_dropped(self) -> int:
        return self.stats.spans_dropped

    @property
    def spooled_batches(self) -> int:
        """Batches waiting in this process's spool; after :meth:`shutdown`, those it left on disk."""
        return self._left_on_disk if self._shutdown else len(self._spool)

    # --- SpanExporter -------------------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        self._check_pid()
        started = time.monotonic()
        spans = self._without_erased(spans)
        if not spans:
            return SpanExportResult.SUCCESS
        batches = self._encode(spans)
        with self._lock:
            return self._deliver(batches, started + self._retry_s, started + self._deadline_s, started)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Replay the spool if Redis is reachable; ``True`` when nothing is left spooled."""
        if self._shutdown:
            return True
        self._check_pid()
        deadline = time.monotonic() + timeout_millis / 1000.0
        with self._lock:
            return self._drain(deadline)

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._check_pid()
        with self._lock:
            self._drain_retrying(time.monotonic() + self._retry_s, time.monotonic() + self._deadline_s)
            if self.stats.export_latency_count:
                self._write_counters()
            self._shutdown = True
            self._left_on_disk = len(self._spool)
            if self._left_on_disk:
                # Nothing is lost, but nobody replays it until an exporter of this bus starts on
                # this host with the same spool directory: say so, with what to look for.
                _log.warning(
                    "%d batches (%d bytes) stay spooled in %s (%s): the next exporter started on "
                    "this host for this bus (same Redis URL, key prefix and spool directory) adopts "
                    "and replays them",
                    self._left_on_disk,
                    self._spool.bytes,
                    self._spool.base,
                    self._last_failure or "Redis unreachable",
                )
            self._spool.close()
            if self._given_client is None and self._client is not None:
                self._client.close()

    # --- internals ----------------------------------------------------------------------------------

    def _without_erased(self, spans: Sequence[ReadableSpan]) -> Sequence[ReadableSpan]:
        """``spans`` without erased learners' (the tombstone, re-read at most every 5 s; docs/privacy.md)."""
        if time.monotonic() >= self._down_until:
            with contextlib.suppress(Exception):  # Redis away: the readers check the tombstone too
                self._tombstone.refresh_sync(self._connection())
        if not self._tombstone.digests:
            return spans
        return [span for span in spans if not self._tombstone.span_erased(span)]

    def _encode(self, spans: Sequence[ReadableSpan]) -> list[Batch]:
        if len(self._streams) == 1:
            return [(self._streams[0], len(spans), wire.encode_readable_spans(spans, self._guard))]
        groups: dict[int, list[ReadableSpan]] = {}
        for span in spans:
            groups.setdefault(shard_index(_user_key(span), len(self._streams)), []).append(span)
        return [
            (self._streams[shard], len(group), wire.encode_readable_spans(group, self._guard))
            for shard, group in sorted(groups.items())
        ]

    def _scrubbed(self, batches: list[Batch]) -> list[Batch]:
        """Spooled ``batches`` without erased learners' spans: a spool replayed after an erasure
        (days later, perhaps) never brings the learner back (docs/privacy.md)."""
        with contextlib.suppress(Exception):  # Redis away: the write fails next, the readers check too
            self._tombstone.refresh_sync(self._connection())
        if not self._tombstone.digests:
            return batches
        out: list[Batch] = []
        for stream, count, blob in batches:
            records = wire.decode_batch(blob)
            kept = self._tombstone.keep_records(records)
            if len(kept) == len(records):
                out.append((stream, count, blob))
            elif kept:
                out.append((stream, len(kept), wire.encode_records(kept)))
        return out

    def _write(self, batches: list[Batch], *, replayed: bool) -> None:
        """One round trip: the batches, the periodic hard cap and the counters."""
        spans = sum(count for _, count, _ in batches)
        stats = self.stats
        # The counters written are the ones after this write succeeds; undone if it fails.
        if replayed:
            stats.spans_replayed += spans
        stats.spans_exported += spans
        stats.batches_exported += len(batches)
        stats.spool_batches = len(self._spool)
        stats.spool_bytes = self._spool.bytes
        now = time.monotonic()
        min_id = f"{int(time.time() * 1000) - self._retention_ms}-0"
        # On a cluster the pipeline is split by node: one round trip to each node the batch touches.
        pipe = self._connection().pipeline(transaction=False)
        for stream, count, blob in batches:
            pipe.xadd(stream, wire.entry_fields(blob, count), minid=min_id, approximate=True)
        trim = now >= self._next_trim
        if trim:
            for stream in self._streams:
                pipe.xtrim(stream, maxlen=self._settings.stream_max_len, approximate=True)
        pipe.hset(self._stats_key, mapping=stats.as_mapping())  # type: ignore[arg-type]
        pipe.expire(self._stats_key, STATS_TTL_S)
        keys = [stream for stream, _, _ in batches]
        try:
            targets = {}
            if self._settings.redis_wait_replicas:
                targets = replication.wait_targets(self._connection(), keys)
                replication.queue_waits(pipe, targets, self._settings)
            replies = pipe.execute()
            if targets:
                replication.confirm(
                    self._connection(), keys, targets, replies[-len(targets) :], self._settings
                )
        except BaseException:
            if replayed:
                stats.spans_replayed -= spans
            stats.spans_exported -= spans
            stats.batches_exported -= len(batches)
            raise
        if trim:
            self._next_trim = now + TRIM_INTERVAL_S

    def _write_counters(self) -> None:
        """The counters alone (at shutdown: the last write's latency is known only after it)."""
        with contextlib.suppress(*UNAVAILABLE_ERRORS):
            pipe = self._connection().pipeline(transaction=False)
            pipe.hset(self._stats_key, mapping=self.stats.as_mapping())  # type: ignore[arg-type]
            pipe.expire(self._stats_key, STATS_TTL_S)
            pipe.execute()

    def _replay(self, deadline: float) -> bool:
        """Write spooled batches oldest first; ``True`` once the spool is empty; Redis errors propagate."""
        while len(self._spool):
            chunk = list(self._spool.peek(REPLAY_CHUNK))
            if not chunk:
                break
            writes = self._scrubbed([(b.stream, b.spans, b.blob) for b in chunk])
            if writes:
                self._write(writes, replayed=True)
            for batch in chunk:
                self._spool.remove(batch)
            if time.monotonic() >= deadline and len(self._spool):
                return False
        return True

    def _drain(self, deadline: float, *, quiet: bool = False) -> bool:
        if not len(self._spool):
            return True
        try:
            done = self._replay(deadline)
        except UNAVAILABLE_ERRORS as exc:
            self._last_failure = self._failure(exc, [])
            (_log.debug if quiet else _log.warning)("spool not drained: %s", self._last_failure)
            return False
        self._down_until = 0.0
        return done

    def _drain_retrying(self, retry_until: float, deadline: float) -> bool:
        """Drain, retrying with backoff until ``retry_until`` (a failover may end meanwhile)."""
        delay = _INITIAL_BACKOFF_S
        while not self._drain(deadline, quiet=True):
            if time.monotonic() + delay >= min(retry_until, deadline):
                return False
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)
        return True

    def _failure(self, exc: BaseException, streams: Sequence[str]) -> str:
        """What failed, naming the node (a cluster fails on the node of a slot, not of the URL)."""
        nodes: list[str] = []
        if self._settings.redis_cluster and self._client is not None:
            with contextlib.suppress(Exception):  # the slot table may be gone with the node
                nodes = list(replication.wait_targets(self._client, streams))
        return unavailable(exc, self._settings, nodes)

    def _deliver(
        self, batches: list[Batch], retry_until: float, deadline: float, started: float
    ) -> SpanExportResult:
        delay = _INITIAL_BACKOFF_S
        while time.monotonic() >= self._down_until:
            try:
                if self._replay(deadline):
                    self._write(batches, replayed=False)
                    self._down_until = 0.0
                    self.stats.observe_latency(time.monotonic() - started)
                    return SpanExportResult.SUCCESS
                break  # replay used the deadline up: queue this batch behind the spool
            except UNAVAILABLE_ERRORS as exc:
                now = time.monotonic()
                if now + delay >= retry_until:
                    self.stats.export_failures += 1
                    self._down_until = now + PROBE_INTERVAL_S
                    self._last_failure = self._failure(exc, [stream for stream, _, _ in batches])
                    _log.warning("%s: spooling to disk", self._last_failure)
                    break
                self.stats.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
        return self._spool_batches(batches)

    def _spool_batches(self, batches: list[Batch]) -> SpanExportResult:
        result = SpanExportResult.SUCCESS
        for stream, count, blob in batches:
            try:
                spooled = self._spool.append(stream, count, blob)
            except OSError as exc:
                _log.warning("cannot write the spool: %s", type(exc).__name__)
                spooled = False
            if spooled:
                self.stats.spans_spooled += count
                self.stats.batches_spooled += 1
            else:
                self.stats.spans_dropped += count
                result = SpanExportResult.FAILURE
                _log.warning(
                    "dropped %d spans: Redis unreachable and the spool is full (%d bytes)",
                    count,
                    self._spool.bytes,
                )
        self.stats.spool_batches = len(self._spool)
        self.stats.spool_bytes = self._spool.bytes
        if len(self._spool):
            self._start_replayer()
        return result

    def _start_replayer(self) -> None:
        """A daemon thread that replays the spool once Redis is back, even if no span comes."""
        if self._replayer is not None and self._replayer.is_alive():
            return
        ref = weakref.ref(self)
        pid = self._pid

        def run() -> None:
            while True:
                time.sleep(PROBE_INTERVAL_S)
                exporter = ref()
                if exporter is None or exporter._shutdown or exporter._pid != pid or os.getpid() != pid:
                    return
                with exporter._lock:
                    if not len(exporter._spool):
                        return
                    if time.monotonic() >= exporter._down_until and not exporter._drain(
                        time.monotonic() + exporter._deadline_s, quiet=True
                    ):
                        exporter._down_until = time.monotonic() + PROBE_INTERVAL_S
                del exporter

        self._replayer = threading.Thread(target=run, name="studyin-spool-replay", daemon=True)
        self._replayer.start()
