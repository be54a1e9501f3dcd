"""Fixtures of the bench runner's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.bench_fakes import registered_fakes


@pytest.fixture
def fake_benches() -> Iterator[list[str]]:
    """Two registered fakes: one writes to its isolated schema and keys, one raises."""
    with registered_fakes() as names:
        yield names
