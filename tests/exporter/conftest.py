"""Fixtures of the tests in tests/exporter/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedis


@pytest.fixture(scope="module")
def redis_62(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis62"), bundled=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
