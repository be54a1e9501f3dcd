"""The export against real PostgreSQL, read back with DuckDB and pyiceberg: equal to PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.warehouse.iceberg import ExportWriteError
from studyin_analytics.aggregator.warehouse.parquet import ParquetTarget
from studyin_analytics.aggregator.warehouse.runner import Exporter
from studyin_analytics.aggregator.warehouse.sources import SOURCES, select_sources
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.workload import Workload, build, push

from .conftest import Warehouse
from .readback import SOURCE, export_all, iceberg, iceberg_arrow, latest, parquet, postgres


def ingest(settings: Settings, wl: Workload) -> None:
    """Through the real pipeline: the bus, then the aggregator (its merge SQL sets changed_xid)."""
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)

    async def drain() -> None:
        async with Aggregator(settings) as aggregator:
            await aggregator.drain(timeout_s=60)

    asyncio.run(drain())


PER_DAY = (
    "SELECT CAST(occurred_at AT TIME ZONE 'UTC' AS DATE) AS d, event_type, count(*), "
    "count(DISTINCT user_hash) "
    "FROM {t} GROUP BY 1, 2 ORDER BY 1, 2"
)
PER_LEARNER = (
    "SELECT user_hash, count(*), count(DISTINCT event_id) FROM {t} GROUP BY 1 ORDER BY 1 NULLS FIRST"
)
ROLLUP_COMPARE = {
    "daily_activity_summary": ("user_hash, day", "sessions, study_seconds, xp, events"),
    "gamification_stats": ("user_hash", "xp_total, level, longest_streak"),
    "user_activity_hourly": ("user_hash, hour", "events, sessions, xp"),
    "ai_coach_metrics": ("user_hash, day", "interactions, tokens_in, tokens_out"),
    "system_metrics": ("minute, route, method", "requests, errors, latency_sum_ms"),
    "hourly_analytics_summary": ("hour", "events, active_users, sessions, xp"),
    "learning_sessions": ("user_hash, session_id::text", "xp_earned, duration_s"),
}


def raw_relation(wh: Warehouse) -> str:
    """The raw events as the export reads them: on the citus schema variant with the learner-less ones."""
    if postgres(wh, "SELECT to_regclass('analytics_system_events')::text")[0][0] is None:
        return "analytics_events"
    columns = "event_id, occurred_at, event_type, user_hash"
    return (
        f"(SELECT {columns} FROM analytics_events "
        f"UNION ALL SELECT {columns} FROM analytics_system_events) AS r"
    )


def _norm(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [
        tuple(round(v, 6) if isinstance(v, float) else (str(v) if v is not None else None) for v in r)
        for r in rows
    ]


def assert_equal_to_postgres(wh: Warehouse, *, rollups: bool = True) -> None:
    """Raw events row for row, per day and per learner; every rollup's newest versions = its rows."""
    raw = raw_relation(wh)
    pg_ids = {r[0] for r in postgres(wh, f"SELECT event_id::text FROM {raw}")}
    pg_day = _norm(postgres(wh, PER_DAY.format(t=raw)))
    pg_learner = _norm(postgres(wh, PER_LEARNER.format(t=raw)))
    for con in (parquet(wh, "analytics_events"), iceberg(wh, "analytics_events")):
        ids = [r[0] for r in con.execute("SELECT event_id FROM t").fetchall()]
        assert len(ids) == len(set(ids)), "a raw event was exported twice"
        assert set(ids) == pg_ids
        assert _norm(con.execute(PER_DAY.format(t="t")).fetchall()) == pg_day
        assert _norm(con.execute(PER_LEARNER.format(t="t")).fetchall()) == pg_learner
    for table, (key, values) in ROLLUP_COMPARE.items() if rollups else ():
        sql = f"SELECT {key}, {values} FROM {{t}} ORDER BY {key}"
        want = _norm(postgres(wh, sql.format(t=table)))
        duck_key = key.replace("::text", "")
        duck_sql = f"SELECT {duck_key}, {values} FROM ({latest(SOURCE[table])}) ORDER BY {duck_key}"
        for con in (parquet(wh, table), iceberg(wh, table)):
            assert _norm(con.execute(duck_sql).fetchall()) == want, table


def test_export_reads_back_equal_with_late_events_and_rollup_changes(warehouse: Warehouse) -> None:
    wh = warehouse
    pseudonymizer = Pseudonymizer.from_settings(wh.settings)
    ingest(wh.settings, build(pseudonymizer, users=40, seed=11))
    assert export_all(wh) > 0
    assert_equal_to_postgres(wh)
    summary_versions = iceberg_arrow(wh, "hourly_analytics_summary").num_rows

    # Late events (yesterday, a day already exported) and more learners in the same hours: the
    # summary rows change after their export and are exported again, as new versions.
    ingest(wh.settings, build(pseudonymizer, users=15, seed=12, hours_ago=26))
    ingest(wh.settings, build(pseudonymizer, users=15, seed=13))
    export_all(wh)
    assert_equal_to_postgres(wh)
    assert iceberg_arrow(wh, "hourly_analytics_summary").num_rows > summary_versions
    # Nothing left: another step writes nothing and commits nothing.
    with Exporter(wh.settings, wh.export, list(SOURCES)) as exporter:
        snapshots = exporter.targets[1].snapshot_id(SOURCE["analytics_events"])  # type: ignore[attr-defined]
        assert exporter.step().rows == 0
        assert exporter.targets[1].snapshot_id(SOURCE["analytics_events"]) == snapshots  # type: ignore[attr-defined]


def test_schema_evolution_adds_a_column_without_rewriting(warehouse: Warehouse) -> None:
    wh = warehouse
    pseudonymizer = Pseudonymizer.from_settings(wh.settings)
    ingest(wh.settings, build(pseudonymizer, users=10, seed=21))
    export_all(wh, sources=[SOURCE["analytics_events"]])
    before = {r[0] for r in iceberg(wh, "analytics_events").execute("SELECT event_id FROM t").fetchall()}
    files_before = set(Path(wh.export.warehouse).rglob("*.parquet"))
    postgres(wh, "ALTER TABLE analytics_events ADD COLUMN app_version text")
    ingest(wh.settings, build(pseudonymizer, users=10, seed=22))
    postgres(
        wh,
        "UPDATE analytics_events SET app_version = '2.1' WHERE app_version IS NULL AND "
        "stored_xid >= (SELECT max(stored_xid) FROM analytics_events)",
    )
    export_all(wh, sources=[SOURCE["analytics_events"]])
    # Old data files are still there, unchanged; the new column reads NULL in them.
    assert files_before <= set(Path(wh.export.warehouse).rglob("*.parquet"))
    con = iceberg(wh, "analytics_events")
    assert "app_version" in [c[0] for c in con.execute("DESCRIBE t").fetchall()]
    old = con.execute(
        f"SELECT count(*) FROM t WHERE app_version IS NOT NULL AND event_id IN {tuple(before)!r}"
    )
    assert old.fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM t WHERE app_version = '2.1'").fetchone()[0] > 0  # type: ignore[index]
    pq = parquet(wh, "analytics_events")
    assert pq.execute("SELECT count(*) FROM t WHERE app_version = '2.1'").fetchone()[0] > 0  # type: ignore[index]
    assert_equal_to_postgres(wh, rollups=False)


def _immutable(path: Path, on: bool) -> None:
    """A directory that refuses writes, even to root (``chattr +i``); a plain chmod otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], check=True)
    else:
        for p in [path, *path.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555 if on else 0o755)


@pytest.mark.parametrize("target", ["parquet", "iceberg"])
def test_a_directory_that_refuses_writes_commits_nothing(warehouse: Warehouse, target: str) -> None:
    wh = warehouse
    wh.export = wh.export.model_copy(update={"formats": [target]})
    raw = SOURCE["analytics_events"]
    ingest(wh.settings, build(Pseudonymizer.from_settings(wh.settings), users=8, seed=31))
    export_all(wh, sources=[raw])
    ingest(wh.settings, build(Pseudonymizer.from_settings(wh.settings), users=8, seed=32))
    # The whole tree refuses: the source's directory (Parquet) or the table's data directory.
    refusing = (
        Path(wh.export.parquet_dir) / raw.table
        if target == "parquet"
        else Path(wh.export.warehouse) / wh.export.namespace / raw.table / "data"
    )
    with Exporter(wh.settings, wh.export, [raw]) as exporter:
        cursor = exporter.targets[0].cursor(raw)
        listing = sorted(str(p) for p in Path(wh.root).rglob("*"))
        _immutable(refusing, True)
        try:
            with pytest.raises(ExportWriteError) as failure:
                # Until the new rows are below the watermark: a time budget, not a count of steps (50
                # quick steps were not always enough while other tests' transactions held it back).
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    exporter.step()
                    time.sleep(0.05)
        finally:
            _immutable(refusing, False)
        assert "nothing was committed" in str(failure.value) and "Operation not permitted" in str(
            failure.value
        )
        assert exporter.targets[0].cursor(raw) == cursor
    after = sorted(str(p) for p in Path(wh.root).rglob("*"))
    assert after == listing, (set(after) ^ set(listing), str(failure.value))
    export_all(wh, sources=[raw])  # writable again: the export catches up, exactly once
    pg = {r[0] for r in postgres(wh, f"SELECT event_id::text FROM {raw_relation(wh)}")}
    con = parquet(wh, raw.table) if target == "parquet" else iceberg(wh, raw.table)
    ids = [r[0] for r in con.execute("SELECT event_id FROM t").fetchall()]
    assert sorted(ids) == sorted(pg)


def test_dry_run_status_and_aggregates_only(warehouse: Warehouse) -> None:
    wh = warehouse
    ingest(wh.settings, build(Pseudonymizer.from_settings(wh.settings), users=12, seed=41))
    with Exporter(wh.settings, wh.export, list(SOURCES), dry_run=True) as exporter:
        report = exporter.step()
        assert report.outcomes == []
        lag = exporter.lag()
    assert (
        lag["analytics_events"]["iceberg"] == postgres(wh, f"SELECT count(*) FROM {raw_relation(wh)}")[0][0]
    )
    assert not Path(wh.export.parquet_dir).exists() and not Path(wh.export.warehouse).exists()
    aggregates = select_sources(None, aggregates_only=True)
    assert {s.table for s in aggregates} == {"system_metrics", "hourly_analytics_summary"}
    wh.export = wh.export.model_copy(update={"formats": ["parquet"]})
    export_all(wh, sources=aggregates)
    written = sorted(
        p.relative_to(wh.export.parquet_dir).parts[0] for p in Path(wh.export.parquet_dir).rglob("*.parquet")
    )
    assert set(written) == {"system_metrics", "hourly_analytics_summary"}
    for table in set(written):
        columns = [c[0] for c in parquet(wh, table).execute("DESCRIBE t").fetchall()]
        assert "user_hash" not in columns


def test_exporter_role_reads_only(warehouse: Warehouse) -> None:
    wh = warehouse
    role = wh.export.postgres_role
    with pytest.raises(Exception, match="permission denied"):
        postgres(wh, "INSERT INTO gamification_stats (user_hash) VALUES ('x')", role)
    with pytest.raises(Exception, match="permission denied"):
        postgres(wh, "SELECT * FROM access_audit_log", role)
    assert postgres(wh, "SELECT count(*) FROM analytics_events", role) == [(0,)]


def test_cli_export_summary_and_status(warehouse: Warehouse) -> None:
    wh = warehouse
    ingest(wh.settings, build(Pseudonymizer.from_settings(wh.settings), users=6, seed=51))
    env = {**os.environ, **wh.env()}
    cli = [str(Path(os.sys.executable).with_name("studyin-analytics")), "export"]  # type: ignore[attr-defined]
    for _ in range(30):
        status = json.loads(
            subprocess.run([*cli, "--status"], env=env, capture_output=True, check=True).stdout
        )
        done = subprocess.run(cli, env=env, capture_output=True, text=True, check=True)
        if (
            json.loads(subprocess.run([*cli, "--status"], env=env, capture_output=True, check=True).stdout)[
                "lag_rows"
            ]
            == 0
        ):
            break
    assert status["lag_rows"] > 0
    assert "analytics_events" in done.stderr and "rows in" in done.stderr
    assert ParquetTarget(wh.export.parquet_dir).cursor(SOURCE["analytics_events"]) is not None


def test_follow_serves_health_and_lag_and_stops_on_sigterm(warehouse: Warehouse) -> None:
    import signal
    import socket
    import time

    import httpx

    wh = warehouse
    ingest(wh.settings, build(Pseudonymizer.from_settings(wh.settings), users=6, seed=61))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli = [str(Path(os.sys.executable).with_name("studyin-analytics")), "export", "--follow"]  # type: ignore[attr-defined]
    process = subprocess.Popen(
        [*cli, "--interval", "0.2", "--health-port", str(port)],
        env={**os.environ, **wh.env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
            except httpx.HTTPError:
                status = {}
            if status.get("steps") and status.get("lag_rows") == 0 and status.get("rows_exported"):
                break
            time.sleep(0.2)
        assert status.get("lag_rows") == 0 and status["healthy"] is True, status
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        assert status["rows_exported"] == len(wh.export.formats) * sum(  # rows written, summed over targets
            r[0]
            for t in [*ROLLUP_COMPARE, raw_relation(wh)]
            for r in postgres(wh, f"SELECT count(*) FROM {t}")
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
