"""Fixtures of the tests in tests/aggregator/storage/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.schema import MIGRATION_LOCK_ID
from tests.support import ServerUrls


@pytest.fixture(params=["configured", "citus"])
def each_variant(request: pytest.FixtureRequest) -> Settings:
    """The schema of ``STUDYIN_TEST_SCHEMA_VARIANT`` (``migrated``), and the citus variant's always."""
    name = "migrated" if request.param == "configured" else "citus_migrated"
    value: Settings = request.getfixturevalue(name)
    return value


@pytest.fixture
async def login_roles(server_urls: ServerUrls, test_id: str) -> AsyncIterator[list[str]]:
    """Names of cluster roles the test creates; dropped afterwards with whatever they hold."""
    names: list[str] = []
    yield names
    conn = await asyncpg.connect(server_urls.postgres_url)
    try:
        for name in names:
            async with conn.transaction():
                # Migrations in other workers grant on the database meanwhile: serialized with them
                # (else "tuple concurrently updated").
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
                if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                    await conn.execute(f'DROP OWNED BY "{name}"')  # database-level grants of this test
                    await conn.execute(f'DROP ROLE "{name}"')
    finally:
        await conn.close()
