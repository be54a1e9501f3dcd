"""Fixtures of the warehouse export tests: a migrated schema, its catalog schema, temp paths."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.warehouse.settings import ExportSettings, catalog_schema


@dataclass
class Warehouse:
    settings: Settings
    export: ExportSettings
    root: Path

    def env(self) -> dict[str, str]:
        """The variables an exporter subprocess needs for this test's schema and paths."""
        return {
            "STUDYIN_ANALYTICS_POSTGRES_URL": str(self.settings.postgres_url),
            "STUDYIN_ANALYTICS_POSTGRES_SCHEMA": self.settings.postgres_schema,
            "STUDYIN_ANALYTICS_REDIS_URL": str(self.settings.redis_url),
            "STUDYIN_ANALYTICS_EXPORT_WAREHOUSE": self.export.warehouse,
            "STUDYIN_ANALYTICS_EXPORT_PARQUET_DIR": self.export.parquet_dir,
            "STUDYIN_ANALYTICS_EXPORT_CHUNK_ROWS": str(self.export.chunk_rows),
        }


@pytest.fixture
def warehouse(settings: Settings, tmp_path: Path) -> Iterator[Warehouse]:
    """A migrated schema, export settings on temp paths; the catalog schema dropped afterwards."""
    from studyin_analytics.aggregator.storage.schema import migrate

    migrated = settings
    migrate(migrated)
    export = ExportSettings(
        warehouse=str(tmp_path / "iceberg"),
        parquet_dir=str(tmp_path / "parquet"),
        chunk_rows=5000,
        _env_file=None,  # type: ignore[call-arg]
    )
    yield Warehouse(migrated, export, tmp_path)

    async def drop() -> None:
        conn = await asyncpg.connect(migrated.postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{catalog_schema(migrated, export)}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
