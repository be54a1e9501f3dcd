"""``rollups rebuild``: recompute rollups from raw events, one UTC day at a time (its rows replaced
in one transaction), while live rounds keep merging.

**Handover.** Every transaction that merges rollup deltas takes the rollups' advisory lock in
*shared* mode first (:data:`.rollup_sql.LOCK_ROLLUPS_SHARED`, in :meth:`.rollups.Rollup.apply`)
and holds it to its commit. A rebuilt day first reads and counts its raw events without any lock,
in a read-only snapshot S1 (the long part). Then, in one transaction, it takes the lock
*exclusively* (:data:`.rollup_sql.LOCK_ROLLUPS_EXCLUSIVE`). Once it holds it, every transaction
that merged deltas has committed (its raw events and its deltas are both visible) and every other
one has not merged yet (its raw events are not visible: a transaction inserts its raw events and
merges their deltas together, or not at all). It adds the day's raw events S1 did not see (their
``stored_xid`` is not visible in S1: committed since), reads the stored sessions, deletes the
day's rows and writes the recomputed ones, and commits; the transactions that waited merge their
deltas into the rebuilt rows. So each event is counted once, either by the rebuild or by its own
transaction: no double count, no gap. Live rounds do not stop reading or copying raw events; their
merges wait only for the locked part of a day (the events committed since S1, the sessions, the
day's rows).

**Resumable and idempotent.** Each day commits with its progress (``rollup_rebuilds``: the day the
rebuild began at and the last day committed, per table). A rebuild killed at any point leaves
every day either rebuilt or untouched; run again with the same ``--from`` it resumes after the
last committed day, and a completed rebuild (its progress row deleted) run again recomputes the
same rows. Which tables are rebuildable and why the others are not: :mod:`.rebuild_tables`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from ...instrumentation.settings_base import ConfigurationError
from ..storage.db import connect_kwargs
from ..storage.schema import existing_partitions
from ..storage.settings import PostgresSettings
from ..storage.variant import LEARNERLESS_TABLE
from .mapping import RAW_COLUMNS, rows_of
from .rebuild_tables import NOT_REBUILDABLE, REBUILDS, Rebuild, Recount, day_bounds
from .rollup_sql import LOCK_ROLLUPS_EXCLUSIVE
from .sessions import Session

__all__ = ["RebuildRefused", "RebuildReport", "RebuildStopped", "rebuild", "select_tables"]

PROGRESS_TABLE = "rollup_rebuilds"
LOCK_WAIT_S = 5.0
LOCK_ATTEMPTS = 60
"""A day waits at most :data:`LOCK_WAIT_S` for the rollups' lock (``lock_timeout``), then lets the
merges queued behind its request through and tries again, up to :data:`LOCK_ATTEMPTS` times: a
transaction stuck while holding the shared lock never stalls every aggregator's merges behind a
waiting rebuild for longer than that."""
FETCH_ROWS = 20_000
"""Raw events fetched and counted at a time (a day is never held in memory, only its keys)."""

_EVENTS = f"""
SELECT {", ".join(RAW_COLUMNS)} FROM analytics_events WHERE occurred_at >= $1 AND occurred_at < $2
"""
_EVENTS_SINCE = (
    _EVENTS
    + """AND stored_xid >= pg_snapshot_xmin($3::text::pg_snapshot)::text::bigint
AND NOT pg_visible_in_snapshot(stored_xid::text::xid8, $3::text::pg_snapshot)
"""
)
"""The day's raw events stored by transactions the snapshot ``$3`` did not see (the BRIN index on
``stored_xid`` skips the older part of the partition)."""
_SESSIONS = """
SELECT user_hash, started_at, start_event_id, ended_at, end_event_id, duration_s, study_s,
       xp_earned, materials_touched, end_reason
FROM learning_sessions
WHERE (started_at >= $1 AND started_at < $2)
   OR (study_s > 0 AND ended_at >= $1 AND ended_at - make_interval(secs => study_s + 1) < $2)
"""
"""Sessions that count in the day: started in it, or with study time that may reach into it."""

_log = logging.getLogger(__name__)

AfterRead = Callable[[date], Awaitable[None]]


class RebuildRefused(ConfigurationError):
    """The rebuild cannot be done as asked (nothing was changed; exit 2): the message says why."""


class RebuildStopped(RuntimeError):
    """The rebuild stopped midway (exit 1): the days committed before stay; run it again to resume."""


@dataclass(slots=True)
class RebuildReport:
    tables: list[str]
    first_day: date | None = None
    last_day: date | None = None
    resumed: bool = False
    days: int = 0
    events: int = 0
    rows: int = 0
    seconds: float = 0.0
    longest_lock_s: float = 0.0
    """The longest a day held the rollups' lock (live merges waited at most this long)."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def select_tables(names: Sequence[str] | None) -> list[Rebuild]:
    """The registered rebuilds of ``names`` (all when none), or :class:`RebuildRefused` with the reason."""
    if not names:
        return list(REBUILDS.values())
    chosen: list[Rebuild] = []
    for name in names:
        if name in NOT_REBUILDABLE:
            raise RebuildRefused(f"{name} cannot be rebuilt from raw events: {NOT_REBUILDABLE[name]}")
        if name not in REBUILDS:
            raise RebuildRefused(f"no rebuildable table {name!r}; rebuildable: {', '.join(REBUILDS)}")
        if REBUILDS[name] not in chosen:
            chosen.append(REBUILDS[name])
    tables = {r.table for r in chosen}
    # In the registry's order, with the tables computed from a chosen one (kept in step with it).
    return [r for r in REBUILDS.values() if r.table in tables or r.derived_from in tables]


async def connect_rebuilder(settings: PostgresSettings) -> asyncpg.Connection:
    """A connection running as the rebuild role, ``jsonb`` as text (as the aggregator writes it)."""
    kwargs = connect_kwargs(settings, "admin")
    kwargs.pop("init")
    kwargs["server_settings"]["role"] = settings.postgres_rebuild_role
    try:
        conn = await asyncpg.connect(**kwargs)
    except (asyncpg.InsufficientPrivilegeError, asyncpg.InvalidParameterValueError) as exc:
        raise ConfigurationError(
            f"cannot assume role {settings.postgres_rebuild_role!r} "
            f"(STUDYIN_ANALYTICS_POSTGRES_REBUILD_ROLE): {exc}. Run `studyin-analytics migrate` (it "
            f"creates the role) and make the login user a member (GRANT {settings.postgres_rebuild_role} "
            "TO <login user>)"
        ) from exc
    await conn.reset_type_codec("jsonb", schema="pg_catalog")
    return conn


async def rebuild(
    settings: PostgresSettings,
    from_day: date,
    tables: Sequence[str] | None = None,
    *,
    today: date | None = None,
    on_day: Callable[[date, int, int], None] | None = None,
    after_read: AfterRead | None = None,
) -> RebuildReport:
    """Rebuild ``tables`` (all rebuildable ones by default) from ``from_day`` to the last day with
    a raw partition (at least today), resuming an interrupted rebuild of the same ``from_day``.

    ``on_day(day, events, rows)`` follows each committed day; ``after_read(day)`` runs between a
    day's unlocked read and its locked transaction (tests force interleavings with it)."""
    chosen = select_tables(tables)
    report = RebuildReport([r.table for r in chosen])
    started = time.monotonic()
    conn = await connect_rebuilder(settings)
    try:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEARNERLESS_TABLE):
            # The citus variant keeps API requests in a table of their own, which the day's read
            # does not include yet: system_metrics would be rebuilt without them.
            raise RebuildRefused(
                "the citus schema variant is not supported yet: its learner-less events "
                f"({LEARNERLESS_TABLE}) are not read by the rebuild"
            )
        partitions = sorted(await existing_partitions(conn))
        if not partitions:
            raise RebuildRefused("no raw events are stored (analytics_events has no partition)")
        if from_day < partitions[0]:
            raise RebuildRefused(
                f"--from {from_day} is before raw retention: the oldest raw events are of {partitions[0]} "
                "(rebuilding earlier days would lose their rollups)"
            )
        last = max(today or datetime.now(UTC).date(), partitions[-1])
        resume = await _resume_points(conn, chosen, from_day)
        report.resumed = any(day > from_day for day in resume.values())
        day = min(resume.values())
        report.first_day = day
        _log.info(
            "rebuilding %s from %s to %s%s",
            ", ".join(report.tables),
            day,
            last,
            " (resuming an interrupted rebuild)" if report.resumed else "",
        )
        while day <= last:
            due = [r for r in chosen if resume[r.table] <= day]
            events, rows, locked_s = await _rebuild_day(conn, due, day, after_read)
            report.longest_lock_s = max(report.longest_lock_s, locked_s)
            report.days, report.events, report.rows = (
                report.days + 1,
                report.events + events,
                report.rows + rows,
            )
            report.last_day = day
            _log.info(
                "rebuilt %s: %d raw events, %d rows, lock held %.3f s (%s)",
                day,
                events,
                rows,
                locked_s,
                ", ".join(r.table for r in due),
            )
            if on_day is not None:
                on_day(day, events, rows)
            day += timedelta(days=1)
        await conn.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE table_name = ANY($1::text[])", report.tables)
    finally:
        await conn.close()
    report.seconds = time.monotonic() - started
    return report


async def _resume_points(conn: asyncpg.Connection, chosen: list[Rebuild], from_day: date) -> dict[str, date]:
    """Per table, the first day still to rebuild: after the last committed day of an interrupted
    rebuild from the same day; otherwise ``from_day``, recorded as a new rebuild."""
    resume: dict[str, date] = {}
    for r in chosen:
        row = await conn.fetchrow(
            f"SELECT from_day, done_through FROM {PROGRESS_TABLE} WHERE table_name = $1", r.table
        )
        if row is not None and row["from_day"] == from_day and row["done_through"] is not None:
            resume[r.table] = row["done_through"] + timedelta(days=1)
            continue
        await conn.execute(
            f"INSERT INTO {PROGRESS_TABLE} (table_name, from_day) VALUES ($1, $2) "
            "ON CONFLICT (table_name) DO UPDATE SET from_day = EXCLUDED.from_day, done_through = NULL, "
            "started_at = now(), updated_at = now()",
            r.table,
            from_day,
        )
        resume[r.table] = from_day
    return resume


async def _rebuild_day(
    conn: asyncpg.Connection, due: list[Rebuild], day: date, after_read: AfterRead | None = None
) -> tuple[int, int, float]:
    """One day of ``due`` tables (see the module docstring); (events, rows, seconds the lock was held).

    The day's raw events are read and counted first, outside the lock, in a read-only snapshot;
    then, holding the lock, only the events of transactions that snapshot did not see (committed
    since: ``stored_xid`` not visible in it, revision 0008) are added, and the rows replaced.
    """
    start, end = day_bounds(day)
    events = 0
    recount: Recount | None = None
    snapshot = ""
    if any(r.rows is not None for r in due):
        recount = Recount(day)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            events = await _count_events(conn, recount, _EVENTS, start, end)
        if after_read is not None:
            await after_read(day)
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT_S * 1000)}ms'")
                await conn.execute(LOCK_ROLLUPS_EXCLUSIVE)
                await conn.execute("SET LOCAL lock_timeout TO DEFAULT")
                locked = time.monotonic()
                events, rows = await _replace_day(conn, due, day, recount, snapshot, events)
            return events, rows, time.monotonic() - locked
        except asyncpg.LockNotAvailableError:
            _log.warning(
                "%s: the rollups' lock was not free within %.1f s (attempt %d of %d): a transaction "
                "holds it; letting the merges behind it through",
                day,
                LOCK_WAIT_S,
                attempt,
                LOCK_ATTEMPTS,
            )
    raise RebuildStopped(
        f"{day}: the rollups' lock was not free in {LOCK_ATTEMPTS} attempts of {LOCK_WAIT_S:g} s; "
        "look for a transaction stuck while merging (pg_locks, locktype advisory) and run again"
    )


async def _replace_day(
    conn: asyncpg.Connection,
    due: list[Rebuild],
    day: date,
    recount: Recount | None,
    snapshot: str,
    events: int,
) -> tuple[int, int]:
    """Holding the lock: the events committed since the snapshot, the sessions, the day's rows."""
    start, end = day_bounds(day)
    rows = 0
    oldest = min(await existing_partitions(conn), default=None)
    if oldest is None or day < oldest:
        raise RebuildStopped(f"the raw events of {day} were dropped (raw retention) during the rebuild")
    if recount is not None:
        events += await _count_events(conn, recount, _EVENTS_SINCE, start, end, snapshot)
        for record in await conn.fetch(_SESSIONS, start, end):
            recount.add_session(record["user_hash"], Session.from_record(record))
    for r in due:
        await conn.execute(r.delete_sql, *r.bounds(day))
        if r.rows is not None:
            assert recount is not None
            records = r.rows(recount)
            if records:
                await conn.copy_records_to_table(r.table, records=records, columns=r.columns)
            rows += len(records)
        else:
            assert r.insert_sql is not None
            rows += _count_of(await conn.execute(r.insert_sql, start, end))
    await conn.execute(
        f"UPDATE {PROGRESS_TABLE} SET done_through = $2, updated_at = now() "
        "WHERE table_name = ANY($1::text[])",
        [r.table for r in due],
        day,
    )
    return events, rows


async def _count_events(conn: asyncpg.Connection, recount: Recount, query: str, *args: Any) -> int:
    """Count the raw events ``query`` selects (inside a transaction), as the live rounds count them."""
    events = 0
    cursor = await conn.cursor(query, *args)
    while chunk := await cursor.fetch(FETCH_ROWS):
        recount.add(rows_of(chunk))
        events += len(chunk)
    return events


def _count_of(status: Any) -> int:
    """Rows of an ``INSERT`` command status (``INSERT 0 <n>``)."""
    try:
        return int(str(status).rsplit(" ", 1)[-1])
    except ValueError:
        return 0
