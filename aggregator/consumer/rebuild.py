"""``rollups rebuild``: recompute rollups from raw events, one UTC day per transaction, while live
rounds keep merging.

**Handover.** Every transaction that merges rollup deltas takes the rollups' advisory lock in
*shared* mode first (:data:`.rollup_sql.LOCK_ROLLUPS_SHARED`, in :meth:`.rollups.Rollup.apply`)
and holds it to its commit; a rebuild's day takes it *exclusively*
(:data:`.rollup_sql.LOCK_ROLLUPS_EXCLUSIVE`) as its first statement. Once it holds it, every
transaction that merged deltas has committed (its raw events and its deltas are both visible)
and every other one has not merged yet (its raw events are not visible: a transaction inserts
its raw events and merges their deltas together, or not at all). The day's rows are then
deleted and recomputed from the raw events the day's statements see, and committed; the
transactions that waited merge their deltas into the rebuilt rows. So each event is counted
once, either by the rebuild or by its own transaction: no double count, no gap. Live rounds do
not stop reading or copying raw events meanwhile; their merges wait for at most one day's
rebuild transaction (measured in docs/aggregator.md).

**Resumable and idempotent.** Each day commits with its progress (``rollup_rebuilds``: the day the
rebuild began at and the last day committed, per table). A rebuild killed at any point leaves
every day either rebuilt or untouched; run again with the same ``--from`` it resumes after the
last committed day, and a completed rebuild (its progress row deleted) run again recomputes the
same rows. Which tables are rebuildable and why the others are not: :mod:`.rebuild_tables`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from ...instrumentation.settings_base import ConfigurationError
from ..storage.db import connect_kwargs
from ..storage.schema import existing_partitions
from ..storage.settings import PostgresSettings
from .mapping import RAW_COLUMNS, rows_of
from .rebuild_tables import NOT_REBUILDABLE, REBUILDS, Rebuild, Recount, day_bounds
from .rollup_sql import LOCK_ROLLUPS_EXCLUSIVE
from .sessions import Session

__all__ = ["RebuildRefused", "RebuildReport", "rebuild", "select_tables"]

PROGRESS_TABLE = "rollup_rebuilds"
FETCH_ROWS = 20_000
"""Raw events fetched and counted at a time (a day is never held in memory, only its keys)."""

_EVENTS = f"""
SELECT {", ".join(RAW_COLUMNS)} FROM analytics_events WHERE occurred_at >= $1 AND occurred_at < $2
"""
_SESSIONS = """
SELECT user_hash, started_at, start_event_id, ended_at, end_event_id, duration_s, study_s,
       xp_earned, materials_touched, end_reason
FROM learning_sessions
WHERE (started_at >= $1 AND started_at < $2)
   OR (study_s > 0 AND ended_at >= $1 AND ended_at - make_interval(secs => study_s + 1) < $2)
"""
"""Sessions that count in the day: started in it, or with study time that may reach into it."""

_log = logging.getLogger(__name__)


class RebuildRefused(ConfigurationError):
    """The rebuild cannot be done as asked (nothing was changed): the message says why."""


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
    return [r for r in REBUILDS.values() if r in chosen]  # in the registry's order


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
) -> RebuildReport:
    """Rebuild ``tables`` (all rebuildable ones by default) from ``from_day`` to the last day with
    a raw partition (at least today), resuming an interrupted rebuild of the same ``from_day``."""
    chosen = select_tables(tables)
    report = RebuildReport([r.table for r in chosen])
    started = time.monotonic()
    conn = await connect_rebuilder(settings)
    try:
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
            events, rows = await _rebuild_day(conn, due, day)
            report.days, report.events, report.rows = (
                report.days + 1,
                report.events + events,
                report.rows + rows,
            )
            report.last_day = day
            _log.info(
                "rebuilt %s: %d raw events, %d rows (%s)", day, events, rows, ", ".join(r.table for r in due)
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


async def _rebuild_day(conn: asyncpg.Connection, due: list[Rebuild], day: date) -> tuple[int, int]:
    """One day of ``due`` tables in one transaction (see the module docstring); (events, rows)."""
    start, end = day_bounds(day)
    events = rows = 0
    async with conn.transaction():
        await conn.execute(LOCK_ROLLUPS_EXCLUSIVE)
        oldest = min(await existing_partitions(conn), default=None)
        if oldest is None or day < oldest:
            raise RebuildRefused(f"the raw events of {day} were dropped (raw retention) during the rebuild")
        recount: Recount | None = None
        if any(r.rows is not None for r in due):
            recount, events = await _recount(conn, day, start, end)
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


async def _recount(
    conn: asyncpg.Connection, day: date, start: datetime, end: datetime
) -> tuple[Recount, int]:
    """The day's raw events counted as the live rounds count them, and the sessions counting in it."""
    recount = Recount(day)
    events = 0
    cursor = await conn.cursor(_EVENTS, start, end)
    while chunk := await cursor.fetch(FETCH_ROWS):
        recount.add(rows_of(chunk))
        events += len(chunk)
    for record in await conn.fetch(_SESSIONS, start, end):
        recount.add_session(record["user_hash"], Session.from_record(record))
    return recount, events


def _count_of(status: Any) -> int:
    """Rows of an ``INSERT`` command status (``INSERT 0 <n>``)."""
    try:
        return int(str(status).rsplit(" ", 1)[-1])
    except ValueError:
        return 0
