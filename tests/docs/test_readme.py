"""README.md stays true: every setting and every command is documented there."""

from __future__ import annotations

from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.instrumentation.settings import ENV_PREFIX, Settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [name for name in Settings.model_fields if f"`{ENV_PREFIX}{name.upper()}`" not in README]
    assert not missing, f"settings missing from README.md's table: {missing}"


def test_every_command_is_in_the_readme() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [c for c in sub.choices if f"studyin-analytics {c}" not in README]  # type: ignore[union-attr]
    assert not missing, f"commands missing from README.md: {missing}"


def test_the_two_fresh_machine_commands() -> None:
    assert "make demo" in README and "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci  # CI runs the README's test command


def test_every_file_the_readme_points_to_exists() -> None:
    import re

    root = ROOT
    paths = set(re.findall(r"(?:tests|docs|deploy)/[\w./-]+\.(?:py|md|png|json|yaml)", README))
    missing = sorted(p for p in paths if not (root / p).exists())
    assert paths and not missing, f"README.md points to missing files: {missing}"
