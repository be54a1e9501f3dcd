"""docs/production.md stays true: every test, file and setting it names as proof exists."""

from __future__ import annotations

import re

from studyin_analytics.instrumentation.settings import Settings
from tests.support import ROOT

DOC = (ROOT / "docs" / "production.md").read_text()


def test_every_named_test_exists() -> None:
    named = set(re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", DOC))
    assert len(named) >= 15, "the page should prove its claims with tests"
    missing = [
        f"{path}::{name}"
        for path, name in sorted(named)
        if not (ROOT / path).exists() or not re.search(rf"def {name}\(", (ROOT / path).read_text())
    ]
    assert not missing, f"docs/production.md names tests that do not exist: {missing}"


def test_every_named_file_and_folder_exists() -> None:
    paths = set(re.findall(r"`((?:tests|deploy|docs)/[\w./-]+)`", DOC))
    paths |= {p.split("::")[0] for p in re.findall(r"(tests/[\w/]+\.py)", DOC)}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert paths and not missing, f"docs/production.md points to missing files: {missing}"


def test_every_named_setting_exists() -> None:
    # Settings appear as `STUDYIN_ANALYTICS_X=...` or, short, as `X` (with an underscore: Redis
    # commands such as `XADD` are not settings).
    named = set(re.findall(r"STUDYIN_ANALYTICS_([A-Z_]+[A-Z])", DOC))
    named |= {n for n in re.findall(r"`([A-Z][A-Z_]+[A-Z])(?:=[^`]*)?`", DOC) if "_" in n}
    fields = {name.upper() for name in Settings.model_fields}
    settings_like = {n.removeprefix("STUDYIN_ANALYTICS_") for n in named if not n.startswith("OTEL_")}
    missing = sorted(n.removesuffix("_FILE") for n in settings_like if n.removesuffix("_FILE") not in fields)
    assert not missing, f"docs/production.md names settings that do not exist: {missing}"


def table_rows(heading: str) -> list[str]:
    """The body rows of the first table under ``## heading``."""
    section = DOC.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) > 2, f"no table under {heading!r}"
    return rows[2:]  # without the header and the |---| line


def test_every_failure_mode_and_security_setting_names_its_proof() -> None:
    for heading in ("Failure modes", "Security settings"):
        for row in table_rows(heading):
            assert re.search(r"tests/[\w/]+\.py", row), f"{heading}: a row without a test: {row[:100]}"


def _decorators(path: str, name: str) -> str:
    """The decorator lines right above ``def name(`` in ``path`` (up to the blank line before them)."""
    lines = (ROOT / path).read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if re.match(rf"(async )?def {name}\(", line))
    above: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip():
            break
        above.append(line)
    return "\n".join(reversed(above))


def test_a_test_that_is_expected_to_fail_is_never_cited_as_proof() -> None:
    """A strict xfail states a gap: the page may name it only on a line that says xfail."""
    for path, name in sorted(set(re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", DOC))):
        if "pytest.mark.xfail" not in _decorators(path, name):
            continue
        for line in DOC.splitlines():
            if f"{path}::{name}" in line:
                assert "xfail" in line.replace(f"{path}::{name}", ""), f"{path}::{name} is cited as proof"
