"""Fixtures of the LRS tests: Ralph's venv (created once, cached), a Ralph server per test session and
Ralph's xAPI models as a validator. Anything that cannot be set up FAILS the test with the reason."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from studyin_analytics.aggregator.lrs.xapi import MAPPED_EVENT_TYPES, Statement
from tests.support.lrs.ralph import (
    RalphServer,
    RalphUnavailable,
    Validator,
    ensure_venv,
    validate_statements,
)
from tests.support.lrs.samples import mapped


@pytest.fixture(scope="session")
def ralph_python() -> Path:
    try:
        return ensure_venv()
    except RalphUnavailable as exc:
        pytest.fail(f"cannot set up Ralph's virtualenv: {exc}", pytrace=False)


@pytest.fixture
def fresh_ralph(ralph_python: Path, tmp_path: Path) -> Iterator[RalphServer]:
    """A Ralph of the test's own: its file holds only this test's statements."""
    server = RalphServer(ralph_python, tmp_path / "ralph")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ralph(ralph_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    server = RalphServer(ralph_python, tmp_path_factory.mktemp("ralph"))
    try:
        server.start()
    except RalphUnavailable as exc:
        pytest.fail(f"cannot start Ralph's LRS: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ralph_validate(ralph_python: Path) -> Validator:
    def validate(statements: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return validate_statements(ralph_python, statements)
        except RalphUnavailable as exc:
            pytest.fail(f"cannot run Ralph's models: {exc}", pytrace=False)

    return validate


@pytest.fixture(scope="module")
def reports(
    samples: dict[str, list[Statement]], ralph_validate: Validator
) -> dict[str, list[dict[str, Any]]]:
    flat = [s for group in samples.values() for s in group]
    verdicts = iter(ralph_validate(flat))  # one run of Ralph's models for all rows
    return {event_type: [next(verdicts) for _ in group] for event_type, group in samples.items()}


@pytest.fixture(scope="module")
def samples() -> dict[str, list[Statement]]:
    # A learner of this module run only: the session's Ralph keeps what other modules sent.
    user = f"learner-{uuid.uuid4().hex[:8]}"
    return {event_type: mapped(event_type, user) for event_type in sorted(MAPPED_EVENT_TYPES)}
