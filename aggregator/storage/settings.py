"""Settings group of the analytics database (PostgreSQL): the aggregator, the query API and migrations."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...instrumentation.settings_base import StudyInSettings

_ROLE = r"^[a-z_][a-z0-9_]{0,62}$"


class PostgresSettings(StudyInSettings):
    """Group: where the analytics tables are and which roles each service connects with."""

    postgres_url: str | None = Field(
        default=None, description="PostgreSQL URL of the analytics database, e.g. postgresql://u@h/db"
    )
    aggregator_postgres_url: str | None = Field(
        default=None, description="PostgreSQL URL the aggregator connects with (default: postgres_url)"
    )
    api_postgres_url: str | None = Field(
        default=None, description="PostgreSQL URL the query API connects with (default: postgres_url)"
    )
    postgres_aggregator_role: str = Field(
        default="studyin_aggregator",
        pattern=_ROLE,
        description="Role the migration grants the aggregator's rights to (write); the aggregator SETs it",
    )
    postgres_api_role: str = Field(
        default="studyin_api",
        pattern=_ROLE,
        description="Role the migration grants the API's rights to (read + audit insert); the API SETs it",
    )
    postgres_rebuild_role: str = Field(
        default="studyin_rebuilder",
        pattern=_ROLE,
        description="Role the migration grants `rollups rebuild` its rights to; the command SETs it",
    )
    postgres_erasure_role: str = Field(
        default="studyin_eraser",
        pattern=_ROLE,
        description="Role the migration grants `learner export|erase` (command and staff endpoints) their "
        "rights to; they SET it",
    )
    erasure_postgres_url: str | None = Field(
        default=None,
        description="PostgreSQL URL `learner export|erase` connect with, a member of the erasure role "
        "(default: api_postgres_url, then postgres_url)",
    )
    postgres_schema: str = Field(
        default="studyin_analytics",
        pattern=_ROLE,
        description="Schema that holds the analytics tables",
    )
    postgres_schema_variant: Literal["plain", "citus"] = Field(
        default="plain",
        description=(
            "Schema variant, chosen at the first migration and recorded in the database: plain (one "
            "PostgreSQL) or citus (raw events keyed by user_hash, learner-less events in a table of "
            "their own; docs/scaling-postgres.md); every service must name the recorded one"
        ),
    )
