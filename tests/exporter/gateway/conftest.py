"""Fixtures of the tests in tests/exporter/gateway/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from studyin_analytics.instrumentation.settings import Settings
from tests.support.gateway import client_for


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings):
        yield client
