"""The command line as README.md documents it: every action listed, every argument explained by --help,
and the exit codes it promises (2 for bad usage, naming what is wrong; never "cannot reach" a server
for a file that is not there)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from studyin_analytics.aggregator.cli.main import build_parser
from tests.support import ROOT

pytestmark = pytest.mark.unit

README = (ROOT / "README.md").read_text()
CLI = [sys.executable, "-m", "studyin_analytics.aggregator.cli"]
UNREACHABLE = {  # nothing listens on port 9 (discard): a command that gets this far fails
    "STUDYIN_ANALYTICS_POSTGRES_URL": "postgresql://nobody@127.0.0.1:9/none",
    "STUDYIN_ANALYTICS_REDIS_URL": "redis://127.0.0.1:9/0",
}


def _command_block() -> list[str]:
    section = README.split("## Command line", 1)[1]
    block = section.split("```", 2)[1]
    return [line for line in block.splitlines() if line.startswith("studyin-analytics ")]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _actions(parser: argparse.ArgumentParser) -> set[str]:
    """A command's actions: its subcommands, or the choices of its first positional argument."""
    subcommands = _subcommands(parser)
    if subcommands:
        return set(subcommands)
    for action in parser._actions:
        if not action.option_strings and action.choices:
            return set(action.choices)
    return set()


def _every_parser(
    parser: argparse.ArgumentParser, name: str = "studyin-analytics"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for sub, child in _subcommands(parser).items():
        found += _every_parser(child, f"{name} {sub}")
    return found


def run_cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    env.update(UNREACHABLE, **extra)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_the_readme_lists_every_action_of_every_command() -> None:
    """`studyin-analytics schemas register|list|show|deprecate|publish`: the actions named are the
    command's actions, no more, no fewer."""
    commands = _subcommands(build_parser())
    wrong = []
    for line in _command_block():
        words = shlex.split(line.split("#", 1)[0])
        name = words[1]
        actions = _actions(commands[name])
        if len(words) > 2 and "|" in words[2]:
            documented = set(words[2].split("|"))
            if documented != actions:
                wrong.append(f"{name}: README {sorted(documented)}, --help {sorted(actions)}")
    assert not wrong, wrong


def test_every_argument_of_every_command_has_help() -> None:
    missing = [
        f"{name} {action.dest}"
        for name, parser in _every_parser(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not (action.help or "").strip()
    ]
    assert not missing, f"arguments without a --help line: {missing}"


def test_no_help_shows_source_markup() -> None:
    """Descriptions are for people reading a terminal, not reStructuredText (``double backticks``)."""
    marked = [name for name, parser in _every_parser(build_parser()) if "``" in parser.format_help()]
    assert not marked, marked


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["demo", "--days", "1"], "--days: must be between 3 and 90"),
        (["demo", "--students", "0"], "--students: must be between 1 and 10000"),
        (["demo", "--students", "many"], "--students: not a whole number"),
    ],
)
def test_bad_demo_arguments_are_usage_errors_naming_the_option(args: list[str], named: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr


def test_screenshots_without_chromium_stop_before_the_history(tmp_path: Path) -> None:
    """Said at once (exit 2), not after minutes of simulated study."""
    result = run_cli(
        "demo", "--screenshots", str(tmp_path), STUDYIN_DEMO_CHROMIUM=str(tmp_path / "no-chromium")
    )
    assert result.returncode == 2, result.stderr
    assert "--screenshots needs Chromium" in result.stderr and "make system-deps" in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_missing_definition_file_is_named_not_taken_for_a_server(tmp_path: Path) -> None:
    missing = tmp_path / "coach.json"
    result = run_cli("experiments", "create", str(missing))
    assert result.returncode == 2, result.stderr
    assert f"cannot read {missing}" in result.stderr
    assert "PostgreSQL" not in result.stderr


def test_a_bad_since_is_a_usage_error_naming_the_option() -> None:
    result = run_cli("failed-events", "list", "--since", "yesterday")
    assert result.returncode == 2, result.stderr
    assert "--since: not an ISO 8601 time" in result.stderr


def test_the_readme_command_lines_parse() -> None:
    """Each line parses as written, with one of its alternatives (`a|b`: some need arguments the line
    does not show) and a date for `DATE`."""
    parser = build_parser()
    for line in _command_block():
        words = shlex.split(re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]))  # optional parts in brackets
        words = [w.replace("DATE", "2026-12-01") for w in words]
        alternatives: list[str | None] = [*words[2].split("|")] if len(words) > 2 else [None]
        parsed = []
        for alternative in alternatives:
            argv = words[1:2] + ([alternative] if alternative else []) + words[3:]
            try:
                parsed.append(parser.parse_args(argv))
            except SystemExit:
                continue
        assert parsed and all(callable(args.func) for args in parsed), line
