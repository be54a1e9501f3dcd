"""Settings of the warehouse export (``STUDYIN_ANALYTICS_EXPORT_*``), beside the pipeline's own."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ...instrumentation.settings_base import ENV_PREFIX, require
from ..storage.settings import PostgresSettings as Settings

Format = Literal["iceberg", "parquet"]
_NAME = r"^[a-z_][a-z0-9_]{0,62}$"


class ExportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=f"{ENV_PREFIX}EXPORT_", extra="ignore")

    warehouse: str = Field(
        default="warehouse/iceberg",
        description="Iceberg warehouse: a local path or any URL pyiceberg's FileIO supports (s3://, gs://...)",
    )
    parquet_dir: str = Field(
        default="warehouse/parquet", description="Root of the hive-partitioned Parquet files"
    )
    catalog_uri: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Iceberg SQL catalog (default: the exporter's PostgreSQL URL)",
    )
    catalog_schema: str | None = Field(
        default=None,
        pattern=_NAME,
        description="Schema of the SQL catalog's tables (default: <schema>_iceberg)",
    )
    catalog_name: str = Field(default="studyin", description="Catalog name (rows of the SQL catalog)")
    namespace: str = Field(default="studyin", pattern=_NAME, description="Iceberg namespace of the tables")
    postgres_url: str | None = Field(
        default=None, description="PostgreSQL URL the exporter logs in with (default: postgres_url)"
    )
    postgres_role: str = Field(
        default="studyin_exporter",
        pattern=_NAME,
        description="Role the exporter SETs (read-only, revision 0009)",
    )
    formats: list[Format] = Field(default=["iceberg", "parquet"], description="Targets written")
    interval_s: float = Field(default=60.0, gt=0, description="Pause between steps with --follow")
    chunk_rows: int = Field(default=500_000, ge=1000, description="Rows held in memory at once")
    min_learners: int = Field(
        default=5, ge=1, description="k: --aggregates-only exports no hour with fewer active learners"
    )
    health_host: str = Field(default="127.0.0.1", description="Health endpoint address (--follow)")
    health_port: int = Field(default=0, ge=0, le=65535, description="Health endpoint port; 0: none")


def catalog_schema(settings: Settings, export: ExportSettings) -> str:
    return export.catalog_schema or f"{settings.postgres_schema}_iceberg"[:63]


def exporter_url(settings: Settings, export: ExportSettings) -> str:
    """The libpq URL the exporter logs in with."""
    return export.postgres_url or str(require(settings.postgres_url, "postgres_url"))


def with_options(url: str, role: str | None, search_path: str) -> str:
    """``url`` with libpq ``options`` that set the role and search path at connection start."""
    parts = urlsplit(url)
    options = f"-c search_path={search_path}" + (f" -c role={role}" if role else "")
    query = "&".join(p for p in [parts.query, f"options={quote(options)}"] if p)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def catalog_url(settings: Settings, export: ExportSettings) -> str:
    """SQLAlchemy URL of the SQL catalog: its own schema first on the search path, as the exporter."""
    if export.catalog_uri:
        return export.catalog_uri
    url = with_options(exporter_url(settings, export), export.postgres_role, catalog_schema(settings, export))
    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        scheme = "postgresql+psycopg2"
    return f"{scheme}://{rest}"
