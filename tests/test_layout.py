"""The code keeps its shape (issue 15): no module imports an underscore name of another module, no module
over ~500 lines (except modules that are only SQL/DDL constants or data tables), no function over ~80 lines,
test modules included; pytest fixtures are defined only in conftest.py files. Today's offenders are
listed below with their size: they may shrink, not grow, and a new offender fails. When one is within
the limits, its entry must go (the last test says which).
The layers themselves (instrumentation < exporter < aggregator < benchmarks) are import-linter's contract,
run by ``make lint`` (pyproject.toml, [tool.importlinter])."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.unit

PARTS = ("instrumentation", "exporter", "aggregator", "benchmarks")
MODULE_LINES = 500
FUNCTION_LINES = 80

PRIVATE_IMPORTS_ALLOWED: set[str] = {
    # The CLI's bus printers, tested one by one.
    "tests/aggregator/cli/test_console_output.py: studyin_analytics.aggregator.cli.bus._recent",
    "tests/aggregator/cli/test_console_output.py: studyin_analytics.aggregator.cli.bus._stats",
    "tests/aggregator/cli/test_console_output.py: studyin_analytics.aggregator.cli.bus._tail",
}
"""``<file>: <module>.<name>``: underscore names imported from another module, today."""

BIG_MODULES_ALLOWED: dict[str, int] = {}
"""File -> its line count today: modules over MODULE_LINES still to split."""

LONG_FUNCTIONS_ALLOWED: dict[str, int] = {}
"""``<file>:<function>`` -> its line count today: functions over FUNCTION_LINES still to split."""


def _files() -> Iterator[Path]:
    for part in (*PARTS, "tests"):
        for path in sorted((ROOT / part).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "tests" else ["studyin_analytics", *parts])


def _imported_module(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_imports() -> list[str]:
    found = []
    for path in _files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _imported_module(path, node)
            if not target.startswith(("studyin_analytics", "tests")):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(ROOT)}: {target}.{alias.name}")
    return found


def _is_constants_only(tree: ast.Module) -> bool:
    """Only a docstring, imports and assignments of literals: SQL/DDL constants, data tables."""
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            try:
                ast.literal_eval(node.value)
            except ValueError:
                return False
            continue
        return False
    return True


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    big: dict[str, int] = {}
    long: dict[str, int] = {}
    for path in _files():
        source = path.read_text()
        tree = ast.parse(source, str(path))
        name = str(path.relative_to(ROOT))
        lines = source.count("\n")
        if lines > MODULE_LINES and not _is_constants_only(tree):
            big[name] = lines
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LINES:
                    long[f"{name}:{node.name}"] = length
    return big, long


def test_no_module_imports_an_underscore_name_of_another_module() -> None:
    new = sorted(set(_private_imports()) - PRIVATE_IMPORTS_ALLOWED)
    assert not new, (
        "underscore names imported from another module (make them public or move them):\n" + "\n".join(new)
    )


def _is_fixture(decorator: ast.expr) -> bool:
    """``@pytest.fixture``, ``@pytest.fixture(...)``, ``@pytest_asyncio.fixture...``, ``@fixture...``."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr == "fixture"
    return isinstance(target, ast.Name) and target.id == "fixture"


def test_fixtures_are_defined_only_in_conftest_files() -> None:
    # A fixture in a test or support module is found only by the modules that import it (or by
    # none): a reader looks for fixtures in the conftest.py files above a test and nowhere else.
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path.name != "conftest.py" and "__pycache__" not in path.parts
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(map(_is_fixture, node.decorator_list))
    ]
    assert not found, "fixtures outside conftest.py files (move them to the nearest one):\n" + "\n".join(
        found
    )


def test_no_module_and_no_function_grows_beyond_the_limits() -> None:
    big, long = _sizes()
    grown = [
        f"{name}: {lines} lines (limit {BIG_MODULES_ALLOWED.get(name, MODULE_LINES)})"
        for name, lines in sorted(big.items())
        if lines > BIG_MODULES_ALLOWED.get(name, MODULE_LINES)
    ] + [
        f"{name}: {lines} lines (limit {LONG_FUNCTIONS_ALLOWED.get(name, FUNCTION_LINES)})"
        for name, lines in sorted(long.items())
        if lines > LONG_FUNCTIONS_ALLOWED.get(name, FUNCTION_LINES)
    ]
    assert not grown, "modules over ~500 lines or functions over ~80 lines: split them\n" + "\n".join(grown)


def test_the_allowlists_name_only_todays_offenders() -> None:
    big, long = _sizes()
    private = set(_private_imports())
    stale = (
        sorted(PRIVATE_IMPORTS_ALLOWED - private)
        + sorted(set(BIG_MODULES_ALLOWED) - set(big))
        + sorted(set(LONG_FUNCTIONS_ALLOWED) - set(long))
    )
    assert not stale, "within the limits now: remove from tests/test_layout.py's allowlists:\n" + "\n".join(
        stale
    )
