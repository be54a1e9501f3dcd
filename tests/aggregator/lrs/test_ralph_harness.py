"""The Ralph harness says why when it cannot start, stops what it started, and reuses its cached venv."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.support.lrs import ralph as harness
from tests.support.lrs.ralph import RalphServer, RalphUnavailable

pytestmark = pytest.mark.timeout(1200)  # the first test of a machine creates Ralph's venv


def test_a_missing_interpreter_is_named(tmp_path: Path) -> None:
    with pytest.raises(RalphUnavailable, match=r"cannot run .*/no-such-python: FileNotFoundError"):
        RalphServer(tmp_path / "no-such-python", tmp_path).start()


def test_an_interpreter_without_ralph_fails_with_its_traceback(tmp_path: Path) -> None:
    server = RalphServer(Path(sys.executable), tmp_path)  # the project's venv: no Ralph in it
    with pytest.raises(RalphUnavailable, match=r"(?s)Ralph did not start.*ModuleNotFoundError"):
        server.start(timeout_s=30)
    assert server.process is None


def test_stop_ends_the_server_and_frees_its_port(ralph_python: Path, tmp_path: Path) -> None:
    server = RalphServer(ralph_python, tmp_path)
    server.start()
    process, port = server.process, server.port
    assert process is not None and server.client.get(f"{server.url}/__heartbeat__").status_code == 200
    server.stop()
    assert process.poll() is not None
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_complete_cached_venv_is_reused_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "ralph-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".studyin-ready").write_text(harness._stamp_text())
    monkeypatch.setenv("STUDYIN_TEST_RALPH_VENV", str(venv))
    assert harness.ensure_venv() == venv / "bin" / "python"
    assert harness.venv_dir() == venv
