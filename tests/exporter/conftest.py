"""Fixtures of the tests in tests/exporter/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from studyin_analytics.aggregator.devtools.embedded import EmbeddedRedis
from tests.support.exporter import follow


@pytest.fixture(scope="module")
def redis_62(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis62"), bundled=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary, replica = EmbeddedRedis(tmp_path / "primary"), EmbeddedRedis(tmp_path / "replica")
    primary.start()
    replica.start()
    try:
        follow(replica, primary)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()
