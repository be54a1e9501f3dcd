"""Fixtures of the tests in tests/aggregator/storage/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support import ServerUrls


@pytest.fixture
async def login_roles(server_urls: ServerUrls, test_id: str) -> AsyncIterator[list[str]]:
    """Names of cluster roles the test creates; dropped afterwards with whatever they hold."""
    names: list[str] = []
    yield names
    conn = await asyncpg.connect(server_urls.postgres_url)
    try:
        for name in names:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                await conn.execute(f'DROP OWNED BY "{name}"')  # database-level grants of this test
                await conn.execute(f'DROP ROLE "{name}"')
    finally:
        await conn.close()
