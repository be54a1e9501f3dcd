"""Fixtures of the query API tests (their builders: tests/support/api.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from studyin_analytics.instrumentation.settings import Settings
from tests.support.api import Api, open_api


@pytest.fixture
async def api(migrated: Settings) -> AsyncIterator[Api]:
    async for value in open_api(migrated):
        yield value
