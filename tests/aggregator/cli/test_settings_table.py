"""README's configuration tables are the settings models' (server-free)."""

from __future__ import annotations

from pathlib import Path

from studyin_analytics.aggregator.cli import settings_table
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.instrumentation.settings_base import ENV_PREFIX

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_tables_are_generated_from_the_models() -> None:
    text = README.read_text(encoding="utf-8")
    assert settings_table.replaced(text) == text, (
        "README.md's configuration tables drifted from the settings models: run "
        "`python -m studyin_analytics.aggregator.cli.settings_table --write README.md`"
    )


def test_every_setting_has_exactly_one_row() -> None:
    table = settings_table.render()
    for name in Settings.model_fields:
        assert table.count(f"| `{ENV_PREFIX}{name.upper()}` |") == 1, name


def test_check_flags_a_drifted_readme(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.read_text(encoding="utf-8").replace("Stream entries per read", "stale"))
    assert settings_table.main(["--check", str(stale)]) == 1
    assert settings_table.main(["--write", str(stale)]) == 0
    assert settings_table.main(["--check", str(stale)]) == 0
