"""Warehouse export: raw events to Parquet and Iceberg against the plain fastest path.

* **raw export**: ``N`` raw events (1M; 100k with ``--quick``) in ``analytics_events``; one
  ``studyin-analytics export`` step (:class:`~..aggregator.warehouse.runner.Exporter`) writes them
  all, to hive-partitioned Parquet, then (a fresh table) to Iceberg. Baseline, same run, same
  rows and columns: the ADBC PostgreSQL driver reads them into Arrow and pyarrow writes one
  Parquet file (no partitioning, no cursor, no commit). Targets (issue 21): Parquet >= 0.8x and
  Iceberg >= 0.5x the baseline. ``COPY (SELECT ...) TO STDOUT`` (binary, to a file) of the same
  rows is reported beside it.
* **rollup write strategies**: why rollup versions are appended (docs/export.md): 10k rollup
  rows written to an Iceberg table by ``append``, by ``dynamic_partition_overwrite`` (identity
  date partition: it refuses ``day()``) and by row-level ``upsert`` (on fewer rows: ~ms per row).

Run alone: ``studyin-analytics bench --only warehouse_raw_export --only warehouse_rollup_strategies``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import asyncpg

from ..aggregator.cli.settings import Settings, require
from ..aggregator.warehouse.settings import ExportSettings, catalog_schema, exporter_url, with_options
from ..aggregator.warehouse.sources import RAW, SOURCES, range_query
from .framework import BenchContext, Measurement, at_least, bench, median

TARGET_PARQUET_RATIO = 0.8
TARGET_ICEBERG_RATIO = 0.5
EVENT_TYPES = (
    "material_view",
    "material_complete",
    "quiz_submit",
    "xp_awarded",
    "ai_interaction",
    "api_request",
)


async def _fill(settings: Settings, rows: int) -> None:
    """``rows`` raw events over two UTC days (admin: partitions need the definer functions)."""
    conn = await asyncpg.connect(require(settings.postgres_url, "postgres_url"))
    try:
        await conn.execute(f'SET search_path TO "{settings.postgres_schema}"')
        today = date.today()
        await conn.execute(
            "SELECT create_events_partition($1::date - i) FROM generate_series(-1, 2) AS i", today
        )
        types = "ARRAY[" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + "]"
        batch = 100_000
        for start in range(0, rows, batch):
            await conn.execute(
                f"""
                INSERT INTO analytics_events
                    (event_id, occurred_at, event_type, user_hash, session_id, properties)
                SELECT gen_random_uuid(), now() - (i % 172000) * interval '1 second',
                       ({types})[1 + i % {len(EVENT_TYPES)}], 'k1:' || md5((i % 5000)::text),
                       gen_random_uuid(), jsonb_build_object('material_id', 'm' || (i % 300), 'xp', i % 50)
                FROM generate_series($1::bigint, $2::bigint) AS i
                """,
                start,
                min(rows, start + batch) - 1,
            )
        await conn.execute("ANALYZE analytics_events")
    finally:
        await conn.close()


def _wait_visible(url: str) -> int:
    """The watermark once every filled row is below it (other sessions may hold xmin back)."""
    from ..aggregator.warehouse.watermark import Postgres

    pg = Postgres(url)
    try:
        top = int(str(pg.scalar("SELECT coalesce(max(stored_xid), 0) FROM analytics_events")))
        for _ in range(600):
            hi = pg.xmin()
            if hi > top:
                return hi
            time.sleep(0.1)
        raise TimeoutError("the watermark did not pass the filled rows in 60 s")
    finally:
        pg.close()


def _baseline(url: str, hi: int, folder: Path) -> tuple[float, int]:
    """ADBC -> Arrow -> one Parquet file; the same SELECT as the exporter's."""
    import pyarrow.parquet as pq
    from adbc_driver_postgresql import dbapi

    from ..aggregator.warehouse.watermark import Postgres

    pg = Postgres(url)
    columns = pg.columns(RAW)
    pg.close()
    sql = range_query(SOURCES[0], columns, 0, hi)
    started = time.perf_counter()
    with dbapi.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(sql)
        table = cursor.fetch_arrow_table()
    pq.write_table(table, folder / "baseline.parquet")
    return time.perf_counter() - started, table.num_rows


def _clear(folder: Path) -> None:
    for path in folder.glob("parquet-*"):
        shutil.rmtree(path)


def _export(settings: Settings, export: ExportSettings) -> tuple[float, int]:
    import pyiceberg.catalog.sql  # noqa: F401  (imported once per process: ~1-3 s, not a per-step cost)

    from ..aggregator.warehouse.runner import Exporter

    started = time.perf_counter()
    with Exporter(settings, export, [SOURCES[0]]) as exporter:
        rows = exporter.step().rows
    return time.perf_counter() - started, rows


async def _copy_to(settings: Settings, hi: int, folder: Path) -> tuple[float, int]:
    conn = await asyncpg.connect(
        require(settings.postgres_url, "postgres_url"),
        server_settings={"search_path": settings.postgres_schema},
    )
    try:
        columns = [
            (r[0], r[1])
            for r in await conn.fetch(
                "SELECT column_name, udt_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() "
                "AND table_name = $1 ORDER BY ordinal_position",
                RAW,
            )
        ]
        sql = range_query(SOURCES[0], columns, 0, hi)
        started = time.perf_counter()
        status = await conn.copy_from_query(sql, output=str(folder / "copy.bin"), format="binary")
        return time.perf_counter() - started, int(status.split()[-1])
    finally:
        await conn.close()


async def _drop_catalog(settings: Settings, export: ExportSettings) -> None:
    conn = await asyncpg.connect(require(settings.postgres_url, "postgres_url"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{catalog_schema(settings, export)}" CASCADE')
    finally:
        await conn.close()


@bench("warehouse_raw_export")
async def raw_export(ctx: BenchContext) -> list[Measurement]:
    settings = await ctx.migrated_settings("warehouse")
    rows = ctx.scale(1_000_000, 100_000)
    folder = Path(tempfile.mkdtemp(prefix="bench-warehouse-"))
    base = ExportSettings(_env_file=None)  # type: ignore[call-arg]
    url = with_options(exporter_url(settings, base), base.postgres_role, settings.postgres_schema)
    rates: dict[str, list[float]] = {"baseline": [], "parquet": [], "iceberg": [], "copy": []}
    try:
        async with ctx.task(f"warehouse: filling {rows:,} raw events"):
            await _fill(settings, rows)
        hi = await asyncio.to_thread(_wait_visible, url)
        async with ctx.task("warehouse: export vs ADBC baseline", total=ctx.repeat_count) as task:
            for repeat in range(ctx.repeat_count):
                seconds, n = await asyncio.to_thread(_baseline, url, hi, folder)
                rates["baseline"].append(n / seconds)
                for target in ("parquet", "iceberg"):
                    export = base.model_copy(
                        update={
                            "formats": [target],
                            "parquet_dir": str(folder / f"parquet-{repeat}"),
                            "warehouse": str(folder / "iceberg"),
                            "namespace": f"r{repeat}",
                        }
                    )
                    seconds, n = await asyncio.to_thread(_export, settings, export)
                    if n != rows:
                        raise AssertionError(f"{target} export wrote {n} rows, not {rows}")
                    rates[target].append(n / seconds)
                seconds, n = await _copy_to(settings, hi, folder)
                rates["copy"].append(n / seconds)
                await asyncio.to_thread(_clear, folder)
                ctx.advance(task)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        await _drop_catalog(settings, base)
    baseline = median(rates["baseline"])
    out = [
        Measurement(
            "warehouse: ADBC -> Arrow -> Parquet (baseline)",
            baseline,
            "rows/s",
            samples=rates["baseline"],
            notes=f"{rows:,} raw events, one file",
            headline=False,
        )
    ]
    for target, ratio in (("parquet", TARGET_PARQUET_RATIO), ("iceberg", TARGET_ICEBERG_RATIO)):
        value = median(rates[target])
        text, met = at_least(value / baseline, ratio, "x baseline")
        out.append(
            Measurement(
                f"warehouse: export raw events to {target}",
                value,
                "rows/s",
                baseline=baseline,
                baseline_name="ADBC -> Arrow -> Parquet",
                target=text,
                met=met,
                samples=rates[target],
                notes=f"{rows:,} rows, one step: watermark, read, hive/Iceberg partitioning, fsync, commit",
            )
        )
    out.append(
        Measurement(
            "warehouse: COPY (SELECT ...) TO STDOUT binary",
            median(rates["copy"]),
            "rows/s",
            baseline=baseline,
            baseline_name="ADBC -> Arrow -> Parquet",
            samples=rates["copy"],
            headline=False,
            notes="asyncpg copy_from_query to a local file, same rows and columns",
        )
    )
    return out


def _rollup_strategies(rows: int, upsert_rows: int, folder: Path) -> dict[str, float]:
    """Seconds per strategy for ``rows`` rollup rows (upsert: ``upsert_rows``) into a fresh table."""
    from datetime import timedelta

    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.transforms import DayTransform, IdentityTransform

    catalog = SqlCatalog("bench", uri=f"sqlite:///{folder}/catalog.db", warehouse=folder.as_uri())
    catalog.create_namespace("b")
    day0 = date(2026, 1, 1)

    def table(n: int) -> pa.Table:
        return pa.table(
            {
                "user_hash": [f"k1:{i:08x}" for i in range(n)],
                "day": pa.array([day0 + timedelta(days=i % 7) for i in range(n)], pa.date32()),
                "events": pa.array(range(n), pa.int64()),
                "changed_xid": pa.array([1000 + i for i in range(n)], pa.int64()),
            }
        )

    out: dict[str, float] = {}
    for name, transform in (("append", DayTransform()), ("dynamic_partition_overwrite", IdentityTransform())):
        data = table(rows)
        t = catalog.create_table(f"b.{name}", schema=data.schema)
        with t.update_spec() as spec:
            spec.add_field("day", transform, "day_part")
        t.append(data)  # the state before the step: every row once
        started = time.perf_counter()
        if name == "append":
            t.append(data)
        else:
            t.dynamic_partition_overwrite(data)
        out[name] = time.perf_counter() - started
    data = table(upsert_rows)
    t = catalog.create_table("b.upsert", schema=data.schema)
    t.append(data)
    started = time.perf_counter()
    t.upsert(data, join_cols=["user_hash", "day"])
    out["upsert"] = (time.perf_counter() - started) * rows / upsert_rows  # per-row cost, scaled to ``rows``
    return out


@bench("warehouse_rollup_strategies")
async def rollup_strategies(ctx: BenchContext) -> list[Measurement]:
    rows = 10_000
    upsert_rows = ctx.scale(2_000, 500)
    samples: dict[str, list[float]] = {"append": [], "dynamic_partition_overwrite": [], "upsert": []}
    for _ in range(ctx.repeat_count):
        folder = Path(tempfile.mkdtemp(prefix="bench-rollups-"))
        try:
            for name, seconds in (
                await asyncio.to_thread(_rollup_strategies, rows, upsert_rows, folder)
            ).items():
                samples[name].append(seconds * 1000)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    baseline = median(samples["append"])
    return [
        Measurement(
            f"warehouse: 10k rollup rows by {name}",
            median(values),
            "ms",
            baseline=baseline,
            baseline_name="append",
            samples=values,
            headline=False,
            notes=f"upsert measured on {upsert_rows} rows, scaled" if name == "upsert" else "",
        )
        for name, values in samples.items()
    ]
