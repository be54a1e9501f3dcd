"""Fixtures of the instrumentation tests that run the package as a new user installs it."""

from __future__ import annotations

import pytest

from tests.support.fresh_venv import FreshVenv, fresh_venv


@pytest.fixture(scope="session")
def new_user_venv() -> FreshVenv:
    """A virtualenv with only this package's wheel and its dependencies (see ``fresh_venv.py``)."""
    return fresh_venv()
