"""Fixtures of the tests in tests/exporter/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from studyin_analytics.aggregator.cli.settings import Settings, get_settings
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


@pytest.fixture
def exporter_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    """The ``STUDYIN_ANALYTICS_*`` variables a zero-code exporter reads, pointing at the test's Redis and
    key prefix (the settings cache cleared before and after)."""
    monkeypatch.setenv("STUDYIN_ANALYTICS_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("STUDYIN_ANALYTICS_STREAM_PREFIX", settings.stream_prefix)
    monkeypatch.setenv("STUDYIN_ANALYTICS_PSEUDONYM_KEYS", "t1=test-key-0123456789abcdef")
    monkeypatch.setenv("STUDYIN_ANALYTICS_SPOOL_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
