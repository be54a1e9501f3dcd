"""Server-free unit tests of the export's pure parts: SQL text, partition columns, the Parquet
commit protocol on a local directory, settings and status arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.warehouse.parquet import (
    MANIFESTS,
    STAGING,
    ParquetTarget,
    partition_columns,
    utc_days,
    with_partition_columns,
)
from studyin_analytics.aggregator.warehouse.runner import prefetch
from studyin_analytics.aggregator.warehouse.settings import ExportSettings, catalog_url, with_options
from studyin_analytics.aggregator.warehouse.sources import SOURCES, count_query, range_query, select_sources
from studyin_analytics.aggregator.warehouse.status import FollowState, lag_total

pytestmark = pytest.mark.unit

RAW = SOURCES[0]
DAILY = next(s for s in SOURCES if s.table == "daily_activity_summary")
HOURLY = next(s for s in SOURCES if s.table == "user_activity_hourly")


def test_range_query_is_the_half_open_watermark_range_with_text_for_uuid_and_json() -> None:
    sql = range_query(
        RAW, [("event_id", "uuid"), ("properties", "jsonb"), ("occurred_at", "timestamptz")], 5, 9
    )
    assert sql == (
        'SELECT "event_id"::text AS "event_id", "properties"::text AS "properties", "occurred_at" '
        "FROM analytics_events WHERE stored_xid >= 5 AND stored_xid < 9"
    )
    with pytest.raises(TypeError):
        range_query(RAW, [("a", "text")], "5; DROP TABLE x", 9)  # type: ignore[arg-type]
    assert count_query(DAILY, 3) == "SELECT count(*) FROM daily_activity_summary WHERE changed_xid >= 3"
    assert count_query(DAILY, 3, 7, "x > 1").endswith("changed_xid >= 3 AND changed_xid < 7 AND (x > 1)")


def test_source_selection() -> None:
    assert [s.table for s in select_sources(None, False)] == [s.table for s in SOURCES]
    assert {s.table for s in select_sources(None, True)} == {"system_metrics", "hourly_analytics_summary"}
    assert select_sources(["gamification_stats"], True) == []
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        select_sources(["nope"], False)


def test_partition_columns_are_utc_days() -> None:
    assert partition_columns(RAW) == ["event_date", "event_type"]
    assert partition_columns(DAILY) == ["day"]
    moments = [datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC), datetime(2026, 12, 2, 0, 0, tzinfo=UTC)]
    chunk = pa.table(
        {"occurred_at": pa.array(moments, pa.timestamp("us", tz="UTC")), "event_type": ["a", "b"]}
    )
    out = with_partition_columns(RAW, chunk)
    assert out.column("event_date").to_pylist() == [date(2026, 12, 1), date(2026, 12, 2)]
    daily = pa.table({"day": pa.array([date(2026, 1, 1)], pa.date32())})
    assert with_partition_columns(DAILY, daily) is daily  # the key column is the partition
    hourly = pa.table({"hour": pa.array(moments[:1], pa.timestamp("us", tz="UTC"))})
    assert with_partition_columns(HOURLY, hourly).column("day").to_pylist() == [date(2026, 12, 1)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**50), 2**50), max_size=40), st.sampled_from(["us", "ns", "ms"]))
def test_utc_days_equal_the_zoned_cast(values: list[int], unit: str) -> None:
    """The fast path (a UTC column viewed as naive) gives the days the zoned cast gives,
    before 1970 and at midnight too; other zones and naive columns keep the plain cast."""
    values = [*values, 0, -1, 86_400 * 10**6 - 1, 86_400 * 10**6]
    for tz in ("UTC", "+00:00", None):
        times = pa.chunked_array([pa.array(values, pa.timestamp(unit, tz=tz))])
        assert utc_days(times).equals(pc.cast(times, pa.date32()))
    zoned = pa.chunked_array([pa.array(values, pa.timestamp(unit, tz="Europe/Berlin"))])
    assert utc_days(zoned).equals(pc.cast(zoned, pa.date32()))


def _chunk(n: int, start: int = 0) -> pa.Table:
    t0 = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp() * 1e6
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(start, start + n)],
            "occurred_at": pa.array([int(t0 + i * 3.6e9) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "event_type": [["view", "quiz"][i % 2] for i in range(n)],
        }
    )


def test_parquet_step_commits_by_its_manifest_and_the_cursor_is_the_last_upper_bound(tmp_path: Path) -> None:
    target = ParquetTarget(tmp_path)
    assert target.cursor(RAW) is None
    written = target.write(RAW, _chunk(1).schema, iter([_chunk(30), _chunk(10, 30)]), 0, 100)
    assert (written.rows, written.files) == (40, len(list((tmp_path / RAW.table).rglob("*.parquet"))))
    assert target.cursor(RAW) == 100
    assert target.write(RAW, _chunk(1).schema, iter([]), 100, 200).rows == 0  # empty: no commit
    assert target.cursor(RAW) == 100
    (manifest,) = target.manifests(RAW)
    assert manifest["rows"] == 40 and manifest["range"] == [0, 100]
    assert all((tmp_path / RAW.table / f).is_file() for f in manifest["files"])  # type: ignore[attr-defined]
    assert not list((tmp_path / RAW.table / STAGING).iterdir())


def test_parquet_recovery_rolls_committed_steps_forward_and_drops_the_rest(tmp_path: Path) -> None:
    base = tmp_path / RAW.table
    target = ParquetTarget(tmp_path)
    target.write(RAW, _chunk(1).schema, iter([_chunk(5)]), 0, 10)
    # Killed after the manifest (the commit), before its files were moved into place:
    committed = base / STAGING / f"{10:020d}-{20:020d}" / "event_date=2026-12-03" / "event_type=view"
    committed.mkdir(parents=True)
    (committed / "part-10-20-0-0.parquet").write_bytes(b"x")
    manifest = {
        "range": [10, 20],
        "rows": 1,
        "files": ["event_date=2026-12-03/event_type=view/part-10-20-0-0.parquet"],
    }
    (base / MANIFESTS / f"{10:020d}-{20:020d}.json").write_text(json.dumps(manifest))
    # Killed before its commit: staged files and a half-written manifest.
    (base / STAGING / f"{20:020d}-{30:020d}" / "x").mkdir(parents=True)
    (base / MANIFESTS / f"{20:020d}-{30:020d}.tmp").write_text("{")
    target.recover(RAW)
    assert (
        base / "event_date=2026-12-03" / "event_type=view" / "part-10-20-0-0.parquet"
    ).read_bytes() == b"x"
    assert not list((base / STAGING).iterdir())
    assert sorted(p.name for p in (base / MANIFESTS).iterdir()) == [
        f"{0:020d}-{10:020d}.json",
        f"{10:020d}-{20:020d}.json",
    ]
    assert target.cursor(RAW) == 20


def test_settings_urls() -> None:
    url = with_options("postgresql://u@h:5432/db?sslmode=require", "studyin_exporter", "s1")
    assert (
        url
        == "postgresql://u@h:5432/db?sslmode=require&options=-c%20search_path%3Ds1%20-c%20role%3Dstudyin_exporter"
    )
    settings = Settings(postgres_url="postgresql://u@h/db", postgres_schema="an", _env_file=None)  # type: ignore[call-arg]
    export = ExportSettings(_env_file=None)  # type: ignore[call-arg]
    assert catalog_url(settings, export).startswith(
        "postgresql+psycopg2://u@h/db?options=-c%20search_path%3Dan_iceberg"
    )
    assert (
        catalog_url(settings, export.model_copy(update={"catalog_uri": "sqlite:///x.db"})) == "sqlite:///x.db"
    )


def test_status_arithmetic() -> None:
    assert lag_total({"a": {"parquet": 3, "iceberg": 5}, "b": {"parquet": 0, "iceberg": 0}}) == 5
    state = FollowState()
    for _ in range(3):
        state.failed("refused")
    assert state.as_status()["healthy"] is False and state.as_status()["last_error"] == "refused"


def test_prefetch_keeps_order_and_passes_errors_on() -> None:
    chunks = [_chunk(2, i) for i in range(0, 10, 2)]
    assert [c.column("event_id")[0].as_py() for c in prefetch(iter(chunks))] == ["e0", "e2", "e4", "e6", "e8"]

    def failing():  # type: ignore[no-untyped-def]
        yield chunks[0]
        raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        list(prefetch(failing()))


def test_the_citus_variant_reads_learnerless_raw_events_with_the_others() -> None:
    columns = [("event_id", "uuid"), ("app_version", "text")]
    sql = range_query(RAW, columns, 5, 9, learnerless=frozenset({"event_id"}))
    assert (
        '(SELECT "event_id", "app_version" FROM analytics_events UNION ALL '
        'SELECT "event_id", NULL AS "app_version" FROM analytics_system_events) AS analytics_events'
    ) in sql
    assert "analytics_system_events" in count_query(RAW, 1, 2, columns=columns, learnerless=frozenset())
    # Rollups and the plain variant: the table itself.
    assert "UNION" not in range_query(HOURLY, columns, 5, 9, learnerless=frozenset({"event_id"}))
    assert count_query(RAW, 1, 2, columns=columns) == (
        "SELECT count(*) FROM analytics_events WHERE stored_xid >= 1 AND stored_xid < 2"
    )
