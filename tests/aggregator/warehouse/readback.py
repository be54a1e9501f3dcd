"""Reading the export back with engines of their own (DuckDB; pyiceberg's scan into Arrow) and
PostgreSQL's own answer, for comparisons row for row."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pyarrow as pa

from studyin_analytics.aggregator.warehouse.iceberg import open_catalog
from studyin_analytics.aggregator.warehouse.runner import Exporter
from studyin_analytics.aggregator.warehouse.settings import catalog_url
from studyin_analytics.aggregator.warehouse.sources import SOURCES, Source

from .conftest import Warehouse

SOURCE = {s.table: s for s in SOURCES}


def parquet_files(wh: Warehouse, table: str) -> list[str]:
    base = Path(wh.export.parquet_dir) / table
    return sorted(str(p) for p in base.rglob("*.parquet") if "_staging" not in p.parts)


def parquet(wh: Warehouse, table: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with view ``t``: every Parquet file of ``table`` (hive columns too)."""
    con = duckdb.connect()
    files = parquet_files(wh, table)
    if files:
        con.execute(
            f"CREATE VIEW t AS SELECT * FROM read_parquet({files!r}, "
            "hive_partitioning = true, union_by_name = true)"
        )
    else:
        con.execute("CREATE VIEW t AS SELECT NULL AS none WHERE false")
    return con


def iceberg_arrow(wh: Warehouse, table: str) -> pa.Table:
    catalog = open_catalog(
        wh.export.catalog_name, catalog_url(wh.settings, wh.export), wh.export.warehouse, create=False
    )
    return catalog.load_table(f"{wh.export.namespace}.{table}").scan().to_arrow()  # type: ignore[attr-defined]


def iceberg(wh: Warehouse, table: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with view ``t`` over the Iceberg table scanned into Arrow."""
    con = duckdb.connect()
    data = iceberg_arrow(wh, table)
    con.register("t", data)
    return con


def latest(source: Source) -> str:
    """The newest exported version of each key (rollups: greatest ``changed_xid``)."""
    keys = ", ".join(source.key)
    return (
        "SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER "
        f"(PARTITION BY {keys} ORDER BY changed_xid DESC) AS rn FROM t) WHERE rn = 1"
    )


def export_all(wh: Warehouse, *, sources: list[Source] | None = None, max_steps: int = 200) -> int:
    """Steps until nothing is left to export (other sessions' transactions may hold xmin back)."""
    import time

    rows = 0
    with Exporter(wh.settings, wh.export, sources or list(SOURCES)) as exporter:
        for _ in range(max_steps):
            rows += exporter.step().rows
            if all(v == 0 for lag in exporter.lag().values() for v in lag.values()):
                return rows
            time.sleep(0.2)
    raise AssertionError("the export did not catch up")


def postgres(wh: Warehouse, sql: str, role: str | None = None) -> list[tuple[Any, ...]]:
    server_settings = {"search_path": wh.settings.postgres_schema, "TimeZone": "UTC"}
    if role:
        server_settings["role"] = role

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(wh.settings.postgres_url, server_settings=server_settings)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())
