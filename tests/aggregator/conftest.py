"""Fixtures shared by the aggregator's test folders (the helpers of the tests that run a real
aggregator or API process: tests/support/aggregator_process.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from studyin_analytics.aggregator.devtools.embedded import EmbeddedPostgres


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A private PostgreSQL, initialised but not started: the test starts and stops it (outages)."""
    directory = tmp_path / "pg"
    directory.mkdir()
    server = EmbeddedPostgres(directory)  # initialised, not started
    try:
        yield server
    finally:
        server.stop()
