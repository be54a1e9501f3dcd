"""The API role reads learning events through the analysis view only, and exactly that."""

from __future__ import annotations

import asyncpg
import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


async def test_the_analysis_view_is_the_api_roles_only_window_on_raw_events(migrated: Settings) -> None:
    admin = await connect(migrated)
    try:
        for role, allowed in (
            (migrated.postgres_api_role, {"SELECT"}),
            (migrated.postgres_aggregator_role, set()),
        ):
            held = {
                p
                for p in PRIVILEGES
                if await admin.fetchval(
                    "SELECT has_table_privilege($1, format('%I.analysis_events', $2::text), $3)",
                    role,
                    migrated.postgres_schema,
                    p,
                )
            }
            assert held == allowed, role
        columns = await admin.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 "
            "AND table_name = 'analysis_events'",
            migrated.postgres_schema,
        )
        assert "properties" not in {r["column_name"] for r in columns}
    finally:
        await admin.close()
    api = await connect(migrated, "api")
    try:
        assert await api.fetchval("SELECT count(*) FROM analysis_events") == 0
        assert await api.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint") > 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api.fetch("SELECT * FROM analytics_events LIMIT 1")
    finally:
        await api.close()
