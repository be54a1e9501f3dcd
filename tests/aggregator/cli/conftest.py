"""Fixtures of the command-line tests."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from studyin_analytics.aggregator.cli.main import main
from studyin_analytics.aggregator.cli.settings import Settings
from tests.support.experiments import ExperimentsCli, cli_env


@pytest.fixture
def experiments_cli(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> ExperimentsCli:
    """``main(["experiments", ...])`` in-process with the test's environment (a subprocess costs seconds
    on a loaded CI machine): the command's exit code and output as a CompletedProcess."""
    for name in [k for k in os.environ if k.startswith("STUDYIN_ANALYTICS_")]:
        monkeypatch.delenv(name)
    for name, value in cli_env(migrated).items():
        monkeypatch.setenv(name, value)

    def call(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = main(["experiments", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return call
