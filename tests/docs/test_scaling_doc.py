"""docs/scaling-postgres.md stays true: what an operator runs is run here verbatim (as far as plain
PostgreSQL goes), the distribution calls are the command's, the roles it names are those given
``LOGIN``, and every table, test, file, setting and bench it names exists.

Citus is not installed on the test server: the operator's block runs against plain PostgreSQL, where
``CREATE EXTENSION citus`` fails for lack of the extension and ``migrate --distribute`` migrates the
citus variant, then refuses in one line (tests/aggregator/storage/test_citus.py covers both refusals).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.aggregator.cli.settings import ENV_PREFIX, Settings
from studyin_analytics.aggregator.storage.citus import distribute_statements, login_roles
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.variant import DISTRIBUTED_TABLES, LEARNERLESS_TABLE
from studyin_analytics.aggregator.warehouse.settings import ExportSettings
from tests.support import ROOT

DOC = (ROOT / "docs" / "scaling-postgres.md").read_text()


def section(heading: str) -> str:
    return DOC.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def fenced(text: str, language: str) -> list[str]:
    """The ```` ```language ```` blocks of ``text``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.S | re.M)


def default_login_roles(settings: Settings) -> tuple[str, ...]:
    """:func:`login_roles` of the settings' defaults (the names the docs give)."""
    fields = ("postgres_aggregator_role", "postgres_api_role", "postgres_erasure_role")
    defaults = settings.with_overrides(**{name: Settings.model_fields[name].default for name in fields})
    return login_roles(defaults, ExportSettings.model_fields["postgres_role"].default)


def run_block(block: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    """``block`` run by bash as it is, with ``$COORDINATOR_URL`` the test server and the test's schema."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings.environment("postgres_schema"))
    env["COORDINATOR_URL"] = settings.postgres_url or ""
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # studyin-analytics
    return subprocess.run(
        ["bash", "-c", block], capture_output=True, text=True, env=env, timeout=180, check=False
    )


async def test_the_operators_block_runs_verbatim_and_refuses_without_citus(settings: Settings) -> None:
    (block,) = fenced(section("What an operator runs"), "sh")
    result = await asyncio.to_thread(run_block, block, settings)
    # psql: the extension is not available here (and nothing else went wrong in the command).
    psql_errors = [line for line in result.stderr.splitlines() if "ERROR:" in line]
    assert len(psql_errors) == 1 and "citus" in psql_errors[0], result.stderr
    assert "control file" in psql_errors[0] or "not available" in psql_errors[0], result.stderr
    # migrate: the schema is migrated as the citus variant, then distributing is refused in one line.
    assert f"schema {settings.postgres_schema} is up to date" in result.stderr, result.stderr
    refusals = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(refusals) == 1 and "has no citus extension" in refusals[0], result.stderr
    assert result.returncode == 2, result.stderr
    conn = await connect(settings)
    try:
        assert await conn.fetchval("SELECT variant FROM schema_variant") == "citus"
    finally:
        await conn.close()


@pytest.mark.unit
def test_the_operators_command_lines_parse() -> None:
    lines = [
        line
        for block in fenced(DOC, "sh")
        for line in block.splitlines()
        if line.startswith("studyin-analytics ")
    ]
    lines += re.findall(r"`(studyin-analytics [^`]+)`", DOC)
    assert any("migrate --distribute" in line for line in lines)
    parser = build_parser()
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert callable(args.func), line


@pytest.mark.unit
def test_the_distribution_calls_are_the_commands() -> None:
    (block,) = fenced(section("What an operator runs"), "sql")
    calls = [line.removesuffix(";") for line in block.splitlines() if line.startswith("SELECT ")]
    statements = distribute_statements(set())
    assert calls == statements[: len(calls)]
    rest = re.search(r"^-- (.*) likewise$", block, re.M)
    assert rest is not None
    assert [t.strip() for t in re.split(r",| and ", rest.group(1)) if t.strip()] == list(
        DISTRIBUTED_TABLES[len(calls) :]
    )


@pytest.mark.unit
def test_the_tables_as_documented_are_the_variants() -> None:
    table = section("The distribution column: `user_hash`")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    distributed = [row.split("`")[1] for row in rows if re.search(r"\bdistributed, (first|co-located)", row)]
    assert sorted(distributed) == sorted(DISTRIBUTED_TABLES)
    first = next(row for row in rows if row.startswith(f"| `{DISTRIBUTED_TABLES[0]}`"))
    assert "first of the co-location group" in first
    assert any(row.startswith(f"| `{LEARNERLESS_TABLE}`") and "local" in row for row in rows)


@pytest.mark.unit
def test_the_roles_named_are_those_given_login(offline_settings: Settings) -> None:
    roles = default_login_roles(offline_settings)
    hba = re.search(r"`hostssl <db> ([\w,]+) <coordinator>", DOC)
    assert hba is not None and tuple(hba.group(1).split(",")) == roles
    listed = re.search(r"The service roles\s+\(([^)]*)\)", DOC)
    assert listed is not None and tuple(re.findall(r"`(\w+)`", listed.group(1))) == roles


@pytest.mark.unit
def test_every_named_test_file_setting_and_bench_exists() -> None:
    paths = set(re.findall(r"`((?:tests|aggregator|docs|benchmarks)/[\w./-]+\.(?:py|md))`", DOC))
    assert len(paths) >= 4
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/scaling-postgres.md names missing files: {missing}"
    fields = {name.upper() for name in Settings.model_fields}
    settings = set(re.findall(rf"{ENV_PREFIX}([A-Z_]+[A-Z])", DOC))
    assert settings and settings <= fields, sorted(settings - fields)
    from studyin_analytics.benchmarks import scaling  # noqa: F401  (registers its benches)
    from studyin_analytics.benchmarks.framework import REGISTRY

    benches = set(re.findall(r"--only (\w+)", DOC))
    assert benches and benches <= set(REGISTRY), sorted(benches - set(REGISTRY))
