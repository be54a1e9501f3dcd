"""``rollups rebuild``: the rebuilt rollups equal the incrementally maintained ones and the ground
truth, after damage, under concurrent ingestion by a real aggregator process, and after SIGKILLs."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.main import main as cli_main
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer import rebuild as rebuild_module
from studyin_analytics.aggregator.consumer.mapping import RAW_COLUMNS, raw_records, rows_from_span, rows_of
from studyin_analytics.aggregator.consumer.rebuild import RebuildRefused, RebuildStopped, rebuild
from studyin_analytics.aggregator.consumer.rebuild_tables import REBUILDS, Rebuild
from studyin_analytics.aggregator.consumer.rollup_sql import LOCK_ROLLUPS_SHARED
from studyin_analytics.aggregator.consumer.rollups import Rollup, insert_events, setup_connection
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import existing_partitions
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support import aggregator_process
from tests.support.workload import Workload, build, mismatches, push, truth_of

# `rollups rebuild` refuses the citus variant (its last test): the others rebuild a plain schema.
pytestmark = pytest.mark.plain_variant

KEYS = {
    "daily_activity_summary": ("user_hash", "day"),
    "user_activity_hourly": ("user_hash", "hour"),
    "ai_coach_metrics": ("user_hash", "day"),
    "system_metrics": ("minute", "route", "method"),
    "hourly_analytics_summary": ("hour",),
    "system_metrics_hourly": ("hour", "route", "method"),
    "custom_event_daily": ("day", "event_type"),
    "daily_learners": ("day",),
}
DAMAGE = (
    "UPDATE system_metrics_hourly SET requests = requests + 3",
    "UPDATE daily_activity_summary SET events = events + 7, xp = xp + 1",
    "DELETE FROM user_activity_hourly WHERE ctid IN (SELECT ctid FROM user_activity_hourly LIMIT 5)",
    "UPDATE ai_coach_metrics SET tokens_in = tokens_in * 2, models = '{}'",
    "UPDATE system_metrics SET requests = requests + 1, latency_hist = '{\"1\": 3}'",
    "UPDATE hourly_analytics_summary SET active_users = active_users + 2, events_by_type = '{}'",
    "UPDATE daily_learners SET learners = learners + 2",
    "INSERT INTO daily_activity_summary (user_hash, day, events) VALUES ('t1:bogus', current_date, 3)",
)
"""Wrong rows of every rebuildable table, as a buggy release or a hand edit would leave them."""


def _two_days(pseudonymizer: Pseudonymizer, seed: int, users: int) -> Workload:
    """Events of today and of yesterday (a day the rebuild replaces whole)."""
    return build(pseudonymizer, users=users, seed=seed, spans_per_entry=10) + build(
        pseudonymizer, users=users, seed=seed + 1, spans_per_entry=10, hours_ago=27
    )


def _value(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


async def snapshot(conn: asyncpg.Connection) -> dict[str, dict[Any, tuple[Any, ...]]]:
    """Every rebuildable table by key (``changed_xid`` left out; all-zero rows, which readers
    skip and a rebuild does not recreate, left out)."""
    out: dict[str, dict[Any, tuple[Any, ...]]] = {}
    for table, key in KEYS.items():
        rows: dict[Any, tuple[Any, ...]] = {}
        for record in await conn.fetch(f"SELECT * FROM {table}"):
            values = {k: _value(v) for k, v in record.items() if k != "changed_xid" and k not in key}
            if any(v not in (0, 0.0, None, {}, "{}") for v in values.values()):
                rows[tuple(record[k] for k in key)] = tuple(sorted(values.items()))
        out[table] = rows
    return out


async def _oldest_day(conn: asyncpg.Connection) -> date:
    return min(await existing_partitions(conn))


async def _damage(conn: asyncpg.Connection) -> None:
    for statement in DAMAGE:
        await conn.execute(statement)


async def test_rebuild_repairs_every_table_and_equals_incremental_and_truth(migrated: Settings) -> None:
    settings = migrated.with_overrides(batch_size=50)
    wl = _two_days(Pseudonymizer.from_settings(settings), seed=40, users=25)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    conn = await connect(settings)
    try:
        truth = truth_of(wl)
        assert await mismatches(conn, truth) == []
        incremental = await snapshot(conn)
        await _damage(conn)
        assert await mismatches(conn, truth) != []  # the damage is seen
        oldest = await _oldest_day(conn)
        report = await rebuild(settings, oldest)
        assert report.events == wl.event_count and not report.resumed
        assert await mismatches(conn, truth) == []
        assert await snapshot(conn) == incremental
        assert await conn.fetchval("SELECT count(*) FROM rollup_rebuilds") == 0  # completed
        again = await rebuild(settings, oldest)  # idempotent: the same rows again
        assert again.rows == report.rows
        assert await snapshot(conn) == incremental
        # One table alone: only it is repaired.
        await _damage(conn)
        await rebuild(settings, oldest, ["system_metrics"])
        repaired = await snapshot(conn)
        assert repaired["system_metrics"] == incremental["system_metrics"]
        assert repaired["ai_coach_metrics"] != incremental["ai_coach_metrics"]
    finally:
        await conn.close()


def _records(wl: Workload) -> list[Any]:
    """The raw records of a workload's events, as the aggregator copies them."""
    rows = [
        row
        for entry in wl.entries
        for span in wire.decode_entry(
            {k if isinstance(k, bytes) else k.encode(): v for k, v in entry.items()}
        )
        for row in rows_from_span(span)
    ]
    return raw_records(rows)


@pytest.mark.parametrize("when", ["merged-before-rebuild", "merged-after-rebuild", "committed-after-read"])
async def test_a_transaction_in_flight_is_counted_once_whichever_side_of_the_rebuild(
    migrated: Settings, when: str
) -> None:
    """The handover, forced: a live transaction holds new events of the day being rebuilt, uncommitted.

    Merged before: its deltas are merged (it holds the shared lock); the rebuild must wait for its
    commit and count its events from raw (without the lock it would delete the merged rows and
    write them back without those events). Merged after: only its raw events are copied when the
    rebuild runs; the rebuild does not see them and its merge adds them to the rebuilt rows.
    Committed after read: it merges and commits between the rebuild's unlocked read of the day and
    its locked part, which must add the events the read did not see.
    """
    settings = migrated
    pseudonymizer = Pseudonymizer.from_settings(settings)
    first, late = _two_days(pseudonymizer, seed=70, users=10), build(pseudonymizer, users=8, seed=75)
    push(settings.redis_url or "", stream_keys(settings)[0], first.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    live = await connect(settings, "aggregator")
    conn = await connect(settings)
    try:
        await setup_connection(live)
        records = _records(late)
        oldest = await _oldest_day(conn)
        transaction = live.transaction()
        committed: list[date] = []

        async def commit_late(day: date) -> None:
            if day == records[0][1].date() and not committed:  # the late events' day
                assert await insert_events(live, records, None) == late.event_count
                await transaction.commit()
                committed.append(day)

        await transaction.start()
        if when == "committed-after-read":
            await rebuild(settings, oldest, after_read=commit_late)
            assert committed
        else:
            if when == "merged-before-rebuild":
                assert await insert_events(live, records, None) == late.event_count
            else:
                await live.copy_records_to_table("analytics_events", records=records, columns=RAW_COLUMNS)
            task = asyncio.create_task(rebuild(settings, oldest))
            # It waits for a merged transaction only. The finishing side is awaited, not timed: a
            # fixed 1 s failed under load (a rebuild of this workload takes ~0.3 s on a quiet machine).
            if when == "merged-after-rebuild":
                await asyncio.wait_for(task, timeout=60)
                rollup = Rollup()
                rollup.add(rows_of(records))
                await rollup.apply(live)
            else:
                await asyncio.sleep(1.0)
                assert not task.done(), "the rebuild did not wait for the merged, uncommitted transaction"
            await transaction.commit()
            await task
        assert await mismatches(conn, truth_of(first + late)) == []
    finally:
        await live.close()
        await conn.close()


async def test_a_stuck_merge_never_stalls_the_others_behind_a_waiting_rebuild(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction holding the shared lock and never ending: the rebuild waits at most LOCK_WAIT_S
    per attempt (other merges get the shared lock in between), then gives up, changing nothing."""
    settings = migrated
    wl = build(Pseudonymizer.from_settings(settings), users=4, seed=46, spans_per_entry=10)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    monkeypatch.setattr(rebuild_module, "LOCK_WAIT_S", 0.3)
    monkeypatch.setattr(rebuild_module, "LOCK_ATTEMPTS", 3)
    stuck, other = await connect(settings, "aggregator"), await connect(settings, "aggregator")
    conn = await connect(settings)
    try:
        before = await snapshot(conn)
        await stuck.execute("BEGIN")
        await stuck.execute(LOCK_ROLLUPS_SHARED)
        task = asyncio.create_task(rebuild(settings, await _oldest_day(conn)))
        await asyncio.sleep(0.1)

        async def merge() -> None:  # a merge arriving while the rebuild waits: through within an attempt
            async with other.transaction():
                await other.execute(LOCK_ROLLUPS_SHARED)

        await asyncio.wait_for(merge(), timeout=2.0)
        assert not task.done()
        with pytest.raises(RebuildStopped, match="lock was not free in 3 attempts"):
            await task
        assert await snapshot(conn) == before
    finally:
        for c in (stuck, other, conn):
            await c.close()


async def test_refusals_change_nothing(migrated: Settings) -> None:
    settings = migrated
    wl = build(Pseudonymizer.from_settings(settings), users=5, seed=44, spans_per_entry=10)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    conn = await connect(settings)
    try:
        before = await snapshot(conn)
        oldest = await _oldest_day(conn)
        with pytest.raises(RebuildRefused, match="before raw retention"):
            await rebuild(settings, date.fromordinal(oldest.toordinal() - 1))
        with pytest.raises(RebuildRefused, match="gamification_stats cannot be rebuilt"):
            await rebuild(settings, oldest, ["gamification_stats"])
        with pytest.raises(RebuildRefused, match="no rebuildable table 'nope'"):
            await rebuild(settings, oldest, ["nope"])
        assert await snapshot(conn) == before
        assert await conn.fetchval("SELECT count(*) FROM rollup_rebuilds") == 0
    finally:
        await conn.close()


async def test_a_rollup_registers_a_sql_rebuild_in_one_line(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain GROUP BY rollup (as custom events' per-type count will be) rebuilds through ``insert_sql``."""
    settings = migrated
    wl = build(Pseudonymizer.from_settings(settings), users=5, seed=45, spans_per_entry=10)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
    conn = await connect(settings)
    try:
        await conn.execute(
            "CREATE TABLE type_daily (day date, event_type text, n bigint, PRIMARY KEY (day, event_type))"
        )
        await conn.execute(
            f'GRANT SELECT, INSERT, DELETE ON type_daily TO "{settings.postgres_rebuild_role}"'
        )
        monkeypatch.setitem(  # what register() does, undone after the test
            REBUILDS,
            "type_daily",
            Rebuild(
                "type_daily",
                "day",
                "date",
                insert_sql="INSERT INTO type_daily SELECT ($1 AT TIME ZONE 'UTC')::date, event_type, "
                "count(*) FROM analytics_events WHERE occurred_at >= $1 AND occurred_at < $2 "
                "GROUP BY event_type",
            ),
        )
        await rebuild(settings, await _oldest_day(conn), ["type_daily"])
        counts = {r["event_type"]: r["n"] for r in await conn.fetch("SELECT event_type, n FROM type_daily")}
        want: dict[str, int] = {}
        for event in wl.events:
            want[event.kind] = want.get(event.kind, 0) + 1
        assert counts == want
    finally:
        await conn.close()


async def test_the_rebuild_role_has_exactly_the_documented_rights(migrated: Settings) -> None:
    role = migrated.postgres_rebuild_role
    conn = await connect(migrated)
    try:
        tables = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
                migrated.postgres_schema,
            )
        ]
        expected = {
            "analytics_events": {"SELECT"},
            "learning_sessions": {"SELECT"},
            "rollup_rebuilds": {"SELECT", "INSERT", "UPDATE", "DELETE"},
            **{t: {"SELECT", "INSERT", "DELETE"} for t in KEYS},
        }
        assert set(KEYS) == set(REBUILDS)  # the migration's grants follow the registry
        for table in tables:
            held = {
                p
                for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
                if await conn.fetchval(
                    "SELECT has_table_privilege($1, format('%I.%I', $2::text, $3::text), $4)",
                    role,
                    migrated.postgres_schema,
                    table,
                    p,
                )
            }
            assert held == expected.get(table, set()), table
        flags = await conn.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1", role
        )
        assert flags is not None and not any(flags.values())
    finally:
        await conn.close()


# --- a real aggregator process ingesting while the rebuild runs and is killed ---------------------


KILLS = 3


def _wait_for_count(log: Path, text: str, count: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count(text) >= count:
            return
        assert process.poll() is None, log.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{text!r} not logged {count} times: {log.read_text()}")


async def _progress(settings: Settings) -> list[tuple[str, Any]]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT table_name, done_through FROM rollup_rebuilds WHERE done_through IS NOT NULL"
        )
        return sorted((r["table_name"], r["done_through"]) for r in rows)
    finally:
        await conn.close()


def _rebuild_process(settings: Settings, day: date, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.environment()}
    command = [
        sys.executable,
        "-m",
        "studyin_analytics.aggregator.cli",
        "rollups",
        "rebuild",
        "--from",
        str(day),
    ]
    with open(log, "ab") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_rebuild_under_live_ingestion_and_sigkill_equals_truth(migrated: Settings, tmp_path: Path) -> None:
    settings = migrated
    pseudonymizer = Pseudonymizer.from_settings(settings)
    rng = random.Random(int(os.environ.get("STUDYIN_TEST_SEED", time.time())))
    stream = stream_keys(settings)[0]
    first = _two_days(pseudonymizer, seed=50, users=60)
    waves = [_two_days(pseudonymizer, seed=60 + 2 * i, users=6) for i in range(6)]
    log = tmp_path / "aggregator.log"
    aggregator = aggregator_process.start(settings, log)
    failures: list[BaseException] = []

    def live() -> None:
        try:
            for wave in waves:
                for start in range(0, len(wave.entries), 5):
                    push(settings.redis_url or "", stream, wave.entries[start : start + 5])
                    time.sleep(rng.uniform(0.0, 0.15))
        except BaseException as exc:
            failures.append(exc)

    try:
        aggregator_process.wait_for_text(log, "consuming", aggregator)
        push(settings.redis_url or "", stream, first.entries)
        aggregator_process.wait_drained(settings)

        async def damage() -> date:
            conn = await connect(settings)
            try:
                await _damage(conn)
                return await _oldest_day(conn)
            finally:
                await conn.close()

        oldest = asyncio.run(damage())
        writer = threading.Thread(target=live)
        writer.start()
        rebuild_log = tmp_path / "rebuild.log"
        progress: list[Any] = []
        for _ in range(KILLS):
            process = _rebuild_process(settings, oldest, rebuild_log)
            seen = rebuild_log.read_text().count("rebuilding ") if rebuild_log.exists() else 0
            _wait_for_count(rebuild_log, "rebuilding ", seen + 1, process)
            time.sleep(rng.uniform(0.0, 0.4))  # in a day's transaction, or between two
            process.send_signal(signal.SIGKILL)
            assert process.wait(30) in (-signal.SIGKILL, 0), rebuild_log.read_text()  # 0: ended first
            progress.append(asyncio.run(_progress(settings)))
        process = _rebuild_process(settings, oldest, rebuild_log)
        assert process.wait(120) == 0, rebuild_log.read_text()
        # The last run resumed after the last day the last kill had left committed (if any).
        starts = [line for line in rebuild_log.read_text().splitlines() if "rebuilding " in line]
        assert ("resuming an interrupted rebuild" in starts[-1]) == bool(progress[-1]), (progress, starts)
        writer.join(timeout=120)
        assert not failures and not writer.is_alive(), failures
        aggregator_process.wait_drained(settings)
        assert aggregator_process.exact(settings, sum(waves, first)) == []
        print(f"progress left by the {KILLS} kills: {progress}")
    finally:
        aggregator_process.terminate(aggregator, log)


def test_cli_refuses_a_day_before_raw_retention_with_exit_2(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in migrated.environment().items():
        monkeypatch.setenv(key, value)
    # A fresh schema has the partitions of yesterday .. today + 3 only (migrate creates none: the
    # aggregator's maintenance does), so any day is refused for lack of raw events.
    assert cli_main(["rollups", "rebuild", "--from", "2000-01-01"]) == 2
    assert cli_main(["rollups", "rebuild", "--from", "2000-01-01", "--table", "learning_sessions"]) == 2


async def test_the_citus_variant_is_refused_until_its_learnerless_events_are_read(
    citus_migrated: Settings,
) -> None:
    with pytest.raises(RebuildRefused, match="citus schema variant is not supported yet"):
        await rebuild(citus_migrated, date(2026, 1, 1))
