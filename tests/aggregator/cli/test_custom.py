"""The documented ``schemas`` and ``failed-events`` command lines, run against real servers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from studyin_analytics.aggregator.cli.main import main
from studyin_analytics.aggregator.cli.settings import Settings
from tests.support.custom_events import CASE, case_schema


def test_register_list_show_deprecate_and_an_empty_replay(
    migrated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [k for k in os.environ if k.startswith("STUDYIN_ANALYTICS_")]:
        monkeypatch.delenv(name)
    for name, value in {
        **migrated.environment(),
        **migrated.environment("pseudonym_keys", "jwt_secret"),
    }.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    def data(*args: str) -> Any:
        code, out, err = run(*args)
        assert code == 0, err
        return json.loads(out)

    schema = tmp_path / "case.json"
    schema.write_text(json.dumps(case_schema()))
    code, out, err = run("schemas", "register", CASE, "1-0-0", str(schema))
    assert code == 0 and "registered org.example/case_completed 1-0-0 (MODEL)" in out, err

    bad = case_schema()
    bad["properties"]["email"] = {"type": "string", "maxLength": 9}
    schema.write_text(json.dumps(bad))
    code, _, err = run("schemas", "register", CASE, "1-0-1", str(schema))
    assert code == 1 and "refused: /properties/email:" in err
    assert run("schemas", "register", CASE, "1-0-1", str(tmp_path / "missing.json"))[0] == 2

    assert [(v["name"], v["version"]) for v in data("schemas", "list")] == [(CASE, "1-0-0")]
    assert data("schemas", "show", CASE)[0]["schema"] == case_schema()
    assert run("schemas", "show", "org.example/none")[0] == 1
    assert "deprecated 1 version" in run("schemas", "deprecate", CASE)[1]
    assert data("schemas", "list")[0]["deprecated_at"] is not None
    assert "published the registry" in run("schemas", "publish")[1]

    assert data("failed-events", "list", "--type", CASE) == []
    replayed = data("failed-events", "replay")
    assert replayed["replayed"] == 0 and replayed["seen"] == 0
    assert run("failed-events", "list", "--since", "2026-01-01T00:00:00")[0] == 2
